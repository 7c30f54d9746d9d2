//! End-to-end tests: the real `icp-gate` binary and a real origin on 127.0.0.1, real HTTP, and
//! checks of both what the client got and what the origin received.

mod admin;
mod audit_log;
mod cli;
mod decisions;
mod deploy;
mod explain;
mod h2_transparency;
mod harness;
mod hostile;
mod publish;
mod registry_sync;
mod supervision;
mod terminate;
mod tls;
mod tls_harness;
mod transparency;
mod transparent;
mod upgrade;
