//! The icp-gate service on Pingora: the decision on each request, the block page, forwarding,
//! the admin endpoint, metrics and the sync worker.

pub mod accept;
pub mod access_log;
pub mod admin;
pub mod admin_guard;
pub mod block_page;
mod clock;
pub mod demo_origin;
pub mod destination;
pub mod explain;
pub mod front;
pub mod gate;
pub mod log_line;
pub mod log_writer;
pub mod metrics;
pub mod notify;
pub mod policy;
pub mod readiness;
pub mod server;
pub mod socket;
pub mod sync_service;
pub mod tls;
pub mod top;
pub mod upgrade;

pub use server::{init_logging, run, RunOptions};
