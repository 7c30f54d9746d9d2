//! A `protocol = "tls"` listener: each connection is decided once, on the SNI of its
//! ClientHello, and then passed through to an origin untouched or refused on the wire. The gate
//! holds no certificate here and does no cryptography. The stages, in the order a connection
//! meets them (see `LIFECYCLE.md`):
//!
//! 1. accept (`crate::accept`: the connection cap; transparent listeners' own sockets);
//! 2. `hello`: read the ClientHello, reassembled, capped and within a deadline;
//! 3. decide: the SNI normalized as a Host is, through the same `Gate::decide` as HTTP; no SNI
//!    (or an IP literal) is decided on the address the client connected to;
//! 4. `refuse` (an alert or a reset), or `relay` (passthrough to `crate::destination`'s pick).

pub mod certs;
pub mod hello;
pub mod refuse;
pub mod relay;
pub mod terminate;
pub mod tickets;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use icp_gate_registry::{parse_sni, BlockReason, Host};
use pingora::apps::ServerApp;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::access_log::escape_for_log;
use crate::destination::{ConnAddrs, Destinations};
use crate::gate::{Gate, Outcome};
use crate::metrics::TlsCounters;
use hello::{Hello, HelloFailure};
use relay::{relay, ByteCounters};

/// The connection handler of a `tls` listener.
pub struct TlsApp {
    gate: Arc<Gate>,
    counters: TlsCounters,
    /// Set when the gate holds certificates (`[tls] certificates`): an SNI one of them covers
    /// is terminated instead of decided at the handshake.
    termination: Option<terminate::Termination>,
}

/// What was decided for one connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    /// A filing decision (or not ready) on the SNI or the destination address.
    Decided(Outcome),
    /// No usable ClientHello: refused whatever the mode, as an unusable Host is on HTTP.
    NoHello(HelloFailure),
}

/// What the log line of a decided connection says about its hello.
struct HelloFacts {
    sni: Option<String>,
    alpn: String,
    ech: bool,
    bytes: usize,
    records: usize,
}

impl TlsApp {
    pub fn new(
        gate: Arc<Gate>,
        counters: TlsCounters,
        termination: Option<terminate::Termination>,
    ) -> Self {
        TlsApp {
            gate,
            counters,
            termination,
        }
    }

    /// Where this listener forwards: the gate's, as for its HTTP requests.
    fn destinations(&self) -> &Destinations {
        &self.gate.destinations
    }

    /// The hello's SNI, normalized, when it is a usable host name.
    fn sni_name(hello: &Hello) -> Option<icp_gate_registry::DomainName> {
        let message = hello.message();
        let parsed = hello::walk(&message).ok()?;
        parse_sni(parsed.sni?).ok().flatten()
    }

    fn listener(&self) -> &str {
        &self.gate.listener.name
    }

    /// Decides a complete hello: on its SNI, or with none (or an IP literal) on the address the
    /// client connected to. An SNI that is not a usable host name is refused, as an unusable
    /// Host is on HTTP listeners, in monitor mode too.
    /// Also gives the host decided on, when there was one.
    fn decide(&self, hello: &Hello, addrs: &ConnAddrs) -> (Verdict, Option<Host>) {
        let invalid = (
            Verdict::Decided(Outcome::Blocked(BlockReason::InvalidHost)),
            None,
        );
        let message = hello.message();
        let parsed = match hello::walk(&message) {
            Ok(p) => p,
            Err(failure) => return (Verdict::NoHello(failure), None),
        };
        let host = match parsed.sni.map(parse_sni) {
            Some(Ok(Some(name))) => Host::Domain(name),
            // No SNI, or an IP literal (which counts as none).
            None | Some(Ok(None)) => match self.destinations().destination_ip(addrs) {
                Some(ip) => Host::Ip(ip),
                None => return invalid,
            },
            Some(Err(_)) => return invalid,
        };
        (Verdict::Decided(self.gate.decide(&host)), Some(host))
    }

    /// What a log line says about a hello (only built for the lines: refusals and monitored
    /// connections).
    fn facts(hello: &Hello) -> HelloFacts {
        let message = hello.message();
        let parsed = hello::walk(&message).ok();
        let lossy = |b: &[u8]| escape_for_log(&String::from_utf8_lossy(b));
        HelloFacts {
            sni: parsed.as_ref().and_then(|p| p.sni).map(lossy),
            alpn: parsed
                .as_ref()
                .map(|p| {
                    let names: Vec<String> = p.alpn().map(lossy).collect();
                    escape_for_log(&names.join(","))
                })
                .unwrap_or_default(),
            ech: parsed.as_ref().is_some_and(|p| p.has_ech),
            bytes: hello.wire_len,
            records: hello.records,
        }
    }

    /// Counts a decided connection: the listener's counters, and a refused or monitored SNI
    /// (or destination address) among the blocked names, as `Gate::count` counts requests.
    fn count(&self, verdict: Verdict, host: Option<&Host>) {
        let c = &self.counters;
        if let Verdict::Decided(outcome) = verdict {
            c.top.record(outcome, host);
        }
        match verdict {
            Verdict::Decided(Outcome::Allowed) => c.allowed.inc(),
            Verdict::Decided(Outcome::Blocked(r)) => c.blocked[r.index()].inc(),
            Verdict::Decided(Outcome::Monitored(r)) => c.monitored[r.index()].inc(),
            Verdict::Decided(Outcome::NotReady) => c.not_ready.inc(),
            Verdict::Decided(Outcome::Pending) => {}
            Verdict::NoHello(f) => match f.index() {
                Some(i) => c.hello[i].inc(),
                None => c.abandoned.inc(),
            },
        }
    }

    fn log_refusal(
        &self,
        verdict: Verdict,
        facts: Option<&HelloFacts>,
        client: Option<SocketAddr>,
        destination: Option<SocketAddr>,
    ) {
        let (decision, reason, detail) = match verdict {
            Verdict::Decided(o) => (o.decision_label(), o.reason_label(), ""),
            Verdict::NoHello(f) => ("blocked", f.reason(), f.detail()),
        };
        tracing::info!(
            target: "icp_gate::tls",
            listener = self.listener(),
            client = client.map(|c| c.to_string()).unwrap_or_default(),
            sni = facts.and_then(|f| f.sni.as_deref()).unwrap_or(""),
            alpn = facts.map(|f| f.alpn.as_str()).unwrap_or(""),
            ech = facts.is_some_and(|f| f.ech),
            client_hello_bytes = facts.map_or(0, |f| f.bytes),
            records = facts.map_or(0, |f| f.records),
            decision,
            reason,
            detail,
            original_dst = destination.map(|d| d.to_string()).unwrap_or_default(),
            "tls connection refused"
        );
    }

    /// Connects to the first candidate that answers and writes the hello bytes to it.
    async fn connect(&self, addrs: &ConnAddrs, hello: &Hello) -> Option<TcpStream> {
        let candidates = match self.destinations().candidates(addrs) {
            Ok(c) => c,
            Err(e) => {
                self.gate.counters.destination_error(e);
                tracing::warn!(
                    listener = self.listener(),
                    reason = e.reason(),
                    error = %e,
                    "tls connection not forwarded"
                );
                return None;
            }
        };
        let mut last_error = String::new();
        for addr in candidates.iter() {
            let connect = TcpStream::connect(addr);
            match tokio::time::timeout(self.gate.upstream.connect_timeout, connect).await {
                Ok(Ok(mut up)) => {
                    let _ = up.set_nodelay(true);
                    if up.write_all(&hello.bytes).await.is_ok() {
                        self.counters.to_upstream.inc_by(hello.bytes.len() as u64);
                        return Some(up);
                    }
                    last_error = format!("{addr}: the origin closed before taking the hello");
                }
                Ok(Err(e)) => last_error = format!("{addr}: {e}"),
                Err(_) => last_error = format!("{addr}: connect timed out"),
            }
        }
        self.gate.counters.connect_failed();
        tracing::warn!(
            listener = self.listener(),
            reason = "connect_failed",
            error = last_error,
            "tls connection not forwarded: no upstream answered"
        );
        None
    }
}

#[async_trait]
impl ServerApp for TlsApp {
    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        _shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let listener = &self.gate.listener;
        let deadline = Instant::now() + listener.client_hello_timeout;
        let read = hello::read(&mut stream, deadline).await;
        // A name the gate holds a certificate for is terminated: its requests are decided one
        // by one on their Host (a name held but not filed gets the block page over HTTPS).
        if let (Some(termination), Ok(hello)) = (&self.termination, &read) {
            if let Some(name) = Self::sni_name(hello) {
                if let Some(cert) = termination.certs.lookup(name.as_str()) {
                    let hello = read.expect("matched Ok above");
                    termination
                        .serve(
                            &listener.name,
                            stream,
                            hello,
                            name.as_str(),
                            cert,
                            _shutdown,
                        )
                        .await;
                    return None;
                }
            }
        }
        // SO_ORIGINAL_DST (a system call) only where the listener forwards to it; a connection
        // without SNI is otherwise decided on the listener's local address.
        let addrs = ConnAddrs::of(&stream, self.destinations().is_original_destination());
        let (verdict, host) = match &read {
            Ok(hello) => self.decide(hello, &addrs),
            Err(failure) => (Verdict::NoHello(*failure), None),
        };
        self.count(verdict, host.as_ref());
        let pass = matches!(
            verdict,
            Verdict::Decided(Outcome::Allowed | Outcome::Monitored(_))
        );
        if !pass {
            if verdict == Verdict::NoHello(HelloFailure::Closed) {
                return None;
            }
            let client = ConnAddrs::peer(&stream);
            let facts = read.as_ref().ok().map(Self::facts);
            self.log_refusal(
                verdict,
                facts.as_ref(),
                client,
                self.destinations().original_destination(&addrs),
            );
            refuse::refuse(stream, listener.refuse).await;
            return None;
        }
        let hello = read.expect("a decided connection has its hello");
        if let Verdict::Decided(Outcome::Monitored(_)) = verdict {
            let facts = Self::facts(&hello);
            tracing::info!(
                target: "icp_gate::tls",
                listener = self.listener(),
                sni = facts.sni.as_deref().unwrap_or(""),
                reason = verdict_reason(verdict),
                "tls connection monitored (passed through)"
            );
        }
        let Some(mut upstream) = self.connect(&addrs, &hello).await else {
            // Nothing was sent to the client: it sees the connection close.
            return None;
        };
        // What the access line needs of the hello, taken before its buffer goes.
        let access = self.gate.access_log.this_one().then(|| {
            (
                Self::facts(&hello).sni,
                ConnAddrs::peer(&stream),
                Instant::now(),
            )
        });
        let hello_bytes = hello.bytes.len() as u64;
        drop(hello);
        crate::socket::set_nodelay(&stream);
        let _open = GaugeGuard::new(&self.counters.passthrough_open);
        let relayed = relay(
            &mut stream,
            &mut upstream,
            tunnel_idle(listener.tunnel_idle_timeout),
            ByteCounters {
                to_upstream: &self.counters.to_upstream,
                to_client: &self.counters.to_client,
            },
        )
        .await;
        // One access line per passed-through connection, when it ends (as nginx's stream
        // access log), under the same switch as HTTP access lines.
        if let Some((sni, client, started)) = access {
            tracing::info!(
                target: "icp_gate::access",
                listener = self.listener(),
                client = client.map(|c| c.to_string()).unwrap_or_default(),
                sni = sni.as_deref().unwrap_or(""),
                decision = verdict_decision(verdict),
                reason = verdict_reason(verdict),
                to_upstream = hello_bytes + relayed.to_upstream,
                to_client = relayed.to_client,
                end = relayed.end.as_str(),
                duration_us = started.elapsed().as_micros() as u64,
                "tls connection"
            );
        }
        None
    }
}

fn verdict_decision(v: Verdict) -> &'static str {
    match v {
        Verdict::Decided(o) => o.decision_label(),
        Verdict::NoHello(_) => "blocked",
    }
}

fn verdict_reason(v: Verdict) -> &'static str {
    match v {
        Verdict::Decided(o) => o.reason_label(),
        Verdict::NoHello(f) => f.reason(),
    }
}

fn tunnel_idle(d: Duration) -> Duration {
    d.max(Duration::from_millis(1))
}

/// Holds a gauge one higher while it lives.
pub struct GaugeGuard<'a>(&'a prometheus::IntGauge);

impl<'a> GaugeGuard<'a> {
    pub fn new(g: &'a prometheus::IntGauge) -> Self {
        g.inc();
        GaugeGuard(g)
    }
}

impl Drop for GaugeGuard<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}
