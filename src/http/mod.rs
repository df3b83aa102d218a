//! HTTP transport, with no moderation in it: the listener and its connection workers, idle
//! and size limits, bodies, and the upstream client (TLS, pools, timeouts).

pub mod body;
pub mod idle;
pub mod server;
pub mod upstream;
pub mod workers;
