//! A plain Pingora 0.9 pass-through: every request goes to one upstream, with no decision, no
//! header rewriting and no logging. The load harness (`benches/load/run.sh`) runs it next to
//! icp-gate to show what the gate's decision costs on the forward path.
//!
//! ```sh
//! cargo run --release -p icp-gate-proxy --example passthrough -- 127.0.0.1:18084 127.0.0.1:18083
//! ```
//!
//! One worker thread (like the gate under the harness, `[server] threads = 1`), the same
//! upstream keep-alive pool size as the gate's default (256), plain HTTP on both sides.

use std::net::SocketAddr;
use std::process::ExitCode;

use async_trait::async_trait;
use pingora::proxy::{http_proxy_service_with_name, ProxyHttp, Session};
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::Server;
use pingora::upstreams::peer::HttpPeer;
use pingora::Result;

struct PassThrough {
    upstream: SocketAddr,
}

#[async_trait]
impl ProxyHttp for PassThrough {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.upstream, false, String::new())))
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (listen, upstream) = match args.as_slice() {
        [listen, upstream] => {
            match (listen.parse::<SocketAddr>(), upstream.parse::<SocketAddr>()) {
                (Ok(l), Ok(u)) => (l, u),
                _ => {
                    eprintln!("passthrough: both arguments must be IP:port addresses");
                    return ExitCode::from(2);
                }
            }
        }
        _ => {
            eprintln!("usage: passthrough LISTEN_ADDR UPSTREAM_ADDR   (e.g. 127.0.0.1:18084 127.0.0.1:18083)");
            return ExitCode::from(2);
        }
    };

    // Pingora's defaults put the pid file and upgrade socket in /tmp under fixed names; keep this
    // process's own so that it never meets another Pingora server on the machine.
    let scratch = std::env::temp_dir();
    let id = std::process::id();
    let conf = ServerConf {
        threads: 1,
        upstream_keepalive_pool_size: 256,
        pid_file: scratch
            .join(format!("passthrough-{id}.pid"))
            .display()
            .to_string(),
        upgrade_sock: scratch
            .join(format!("passthrough-{id}.sock"))
            .display()
            .to_string(),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(Opt::default(), conf);
    server.bootstrap();

    let mut service = http_proxy_service_with_name(
        &server.configuration,
        PassThrough { upstream },
        "passthrough",
    );
    service.add_tcp(&listen.to_string());
    server.add_service(service);
    eprintln!("passthrough: {listen} -> {upstream}");
    server.run_forever();
}
