//! End-to-end tests: the real `icp-gate` binary and a real origin on 127.0.0.1, real HTTP, and
//! checks of both what the client got and what the origin received.

/// One list of cases run against both forwarding paths, as linkerd2-proxy's `http1_tests!`
/// runs one transparency suite against every proxy mode: `front_end` (the gate as deployed),
/// `pingora` (`ICP_GATE_FORWARD_PATH=pingora`: Pingora's proxy forwards everything) and
/// `same_on_both_paths` (both, compared). The invoking module provides `cases::NAME() -> Case`,
/// `check(name, case, Path)`, `compare(name, case)` and `Path::{FrontEnd, Pingora}`.
macro_rules! both_paths_suite {
    ($($name:ident),* $(,)?) => {
        /// Every case through the gate as deployed.
        mod front_end {
            $(
                #[test]
                fn $name() {
                    super::check(stringify!($name), super::cases::$name, super::Path::FrontEnd);
                }
            )*
        }

        /// Every case with `ICP_GATE_FORWARD_PATH=pingora`: Pingora's proxy forwards everything.
        mod pingora {
            $(
                #[test]
                fn $name() {
                    super::check(stringify!($name), super::cases::$name, super::Path::Pingora);
                }
            )*
        }

        /// Both paths give the origin and the client the same thing.
        mod same_on_both_paths {
            $(
                #[test]
                fn $name() {
                    super::compare(stringify!($name), super::cases::$name);
                }
            )*
        }
    };
}

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
