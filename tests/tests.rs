//! Integration tests, compiled into one binary.

mod cli;
mod common;
mod golden;
mod hub;
mod parity;
mod quantized;
mod serve;
