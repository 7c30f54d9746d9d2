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

use crate::access_log::{TlsFacts, TlsRecord};
use crate::destination::{ConnAddrs, Destinations};
use crate::gate::{Decided, Gate, Outcome};
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
    Decided(Decided),
    /// No usable ClientHello: refused whatever the mode, as an unusable Host is on HTTP.
    NoHello(HelloFailure),
}

/// What the log line of a decided connection says about its hello.
struct HelloFacts {
    /// The SNI as sent.
    sni: Option<Vec<u8>>,
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
    /// Host is on HTTP listeners, in monitor mode too. Also says what it decided on.
    fn decide(&self, hello: &Hello, addrs: &ConnAddrs) -> (Verdict, Option<Host>) {
        let message = hello.message();
        let parsed = match hello::walk(&message) {
            Ok(p) => p,
            Err(failure) => return (Verdict::NoHello(failure), None),
        };
        let invalid = Verdict::Decided(Decided::without_lookup(Outcome::Blocked(
            BlockReason::InvalidHost,
        )));
        let host = match parsed.sni.map(parse_sni) {
            Some(Ok(Some(name))) => Host::Domain(name),
            // No SNI, or an IP literal (which counts as none).
            None | Some(Ok(None)) => match self.destinations().destination_ip(addrs) {
                Some(ip) => Host::Ip(ip),
                None => return (invalid, None),
            },
            Some(Err(_)) => return (invalid, None),
        };
        (Verdict::Decided(self.gate.decide(&host)), Some(host))
    }

    /// What a log line says about a hello (only built for the lines: refusals and monitored
    /// connections).
    fn facts(hello: &Hello) -> HelloFacts {
        let message = hello.message();
        let parsed = hello::walk(&message).ok();
        HelloFacts {
            sni: parsed.as_ref().and_then(|p| p.sni).map(<[u8]>::to_vec),
            alpn: parsed
                .as_ref()
                .map(|p| {
                    let names: Vec<std::borrow::Cow<'_, str>> =
                        p.alpn().map(String::from_utf8_lossy).collect();
                    names.join(",")
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
        if let Verdict::Decided(d) = verdict {
            c.top.record(d.outcome, host);
        }
        match verdict {
            Verdict::Decided(d) => match d.outcome {
                Outcome::Allowed => c.allowed.inc(),
                Outcome::Blocked(r) => c.blocked[r.index()].inc(),
                Outcome::Monitored(r) => c.monitored[r.index()].inc(),
                Outcome::NotReady => c.not_ready.inc(),
                Outcome::Pending => {}
            },
            Verdict::NoHello(f) => match f.index() {
                Some(i) => c.hello[i].inc(),
                None => c.abandoned.inc(),
            },
        }
    }

    /// The lines of a decided connection: its audit line (refused or monitored), and a
    /// refusal's access line (`crate::access_log`).
    fn log_decided(
        &self,
        verdict: Verdict,
        host: Option<&Host>,
        facts: Option<&HelloFacts>,
        client: Option<SocketAddr>,
        destination: Option<SocketAddr>,
        refused: bool,
    ) {
        let id = self.gate.request_ids.next_id();
        let detail = match verdict {
            Verdict::NoHello(f) => f.detail(),
            Verdict::Decided(_) => "",
        };
        let record = self.record(verdict, host, facts, client, id.as_str());
        let facts = TlsFacts {
            sni: facts.and_then(|f| f.sni.as_deref()),
            alpn: facts.map(|f| f.alpn.as_str()).unwrap_or(""),
            ech: facts.is_some_and(|f| f.ech),
            client_hello_bytes: facts.map_or(0, |f| f.bytes),
            records: facts.map_or(0, |f| f.records),
            detail,
            original_dst: destination,
            relayed: None,
        };
        self.gate.access_log.tls_decided(&record, &facts, refused);
    }

    /// What the lines of a connection say it was decided on and how.
    fn record<'a>(
        &'a self,
        verdict: Verdict,
        host: Option<&'a Host>,
        facts: Option<&'a HelloFacts>,
        client: Option<SocketAddr>,
        request_id: &'a str,
    ) -> TlsRecord<'a> {
        let (sni, ip) = match host {
            Some(Host::Domain(name)) => (Some(name.as_bytes()), None),
            Some(Host::Ip(ip)) => (None, Some(*ip)),
            // Not a usable name: as sent.
            None => (facts.and_then(|f| f.sni.as_deref()), None),
        };
        TlsRecord {
            listener: self.listener(),
            client,
            sni,
            ip,
            decision: verdict_decision(verdict),
            reason: verdict_reason(verdict),
            decided: match verdict {
                Verdict::Decided(d) => Some(d),
                Verdict::NoHello(_) => None,
            },
            request_id,
        }
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
            Verdict::Decided(Decided {
                outcome: Outcome::Allowed | Outcome::Monitored(_),
                ..
            })
        );
        let client = ConnAddrs::peer(&stream);
        if !pass {
            if verdict == Verdict::NoHello(HelloFailure::Closed) {
                return None;
            }
            let facts = read.as_ref().ok().map(Self::facts);
            self.log_decided(
                verdict,
                host.as_ref(),
                facts.as_ref(),
                client,
                self.destinations().original_destination(&addrs),
                true,
            );
            refuse::refuse(stream, listener.refuse).await;
            return None;
        }
        let hello = read.expect("a decided connection has its hello");
        let monitored = matches!(
            verdict,
            Verdict::Decided(Decided {
                outcome: Outcome::Monitored(_),
                ..
            })
        );
        if monitored {
            let facts = Self::facts(&hello);
            self.log_decided(verdict, host.as_ref(), Some(&facts), client, None, false);
            tracing::info!(
                target: "icp_gate::tls",
                listener = self.listener(),
                sni = facts
                    .sni
                    .as_deref()
                    .map(|s| crate::access_log::escape_for_log(&String::from_utf8_lossy(s)))
                    .unwrap_or_default(),
                reason = verdict_reason(verdict),
                "tls connection monitored (passed through)"
            );
        }
        let Some(mut upstream) = self.connect(&addrs, &hello).await else {
            // Nothing was sent to the client: it sees the connection close.
            return None;
        };
        // What the access line needs of the hello, taken before its buffer goes.
        let access = self
            .gate
            .access_log
            .this_one()
            .then(|| (Self::facts(&hello), Instant::now()));
        let hello_bytes = hello.bytes.len() as u64;
        drop(hello);
        // The client's socket has TCP_NODELAY from its accept (Pingora's listeners and the
        // transparent one both set it): relayed records leave as they come.
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
        if let Some((facts, started)) = access {
            let id = self.gate.request_ids.next_id();
            let record = self.record(verdict, host.as_ref(), Some(&facts), client, id.as_str());
            self.gate.access_log.tls_passed(
                &record,
                &TlsFacts {
                    sni: facts.sni.as_deref(),
                    alpn: &facts.alpn,
                    ech: facts.ech,
                    client_hello_bytes: facts.bytes,
                    records: facts.records,
                    detail: "",
                    original_dst: None,
                    relayed: Some((
                        hello_bytes + relayed.to_upstream,
                        relayed.to_client,
                        relayed.end.as_str(),
                        started.elapsed(),
                    )),
                },
            );
        }
        None
    }
}

fn verdict_decision(v: Verdict) -> &'static str {
    match v {
        Verdict::Decided(d) => d.outcome.decision_label(),
        Verdict::NoHello(_) => "blocked",
    }
}

fn verdict_reason(v: Verdict) -> &'static str {
    match v {
        Verdict::Decided(d) => d.outcome.reason_label(),
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
