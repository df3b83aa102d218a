//! Integration tests, compiled into one binary.

mod audit;
mod cli;
mod common;
mod cuda;
mod deploy;
mod docs;
mod faults;
mod gateway;
mod gateway_ops;
mod golden;
mod harness;
mod hostile;
mod hostile_h2;
mod hub;
mod injection;
mod llama_server;
mod load;
mod parity;
mod pii;
mod prometheus_rules;
mod prompt_guard;
mod quantized;
mod remote;
mod sdk;
mod serve;
mod tune;
