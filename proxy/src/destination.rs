//! Where a listener forwards what it lets through, for HTTP and TLS listeners alike: its list of
//! servers (in turn), or the connection's original destination (`SO_ORIGINAL_DST` after an
//! iptables `REDIRECT`, or the local address on a `transparent` TPROXY listener), never one of
//! the gate's own listening addresses (a loop), and only inside the operator's allowed prefixes.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};

use icp_gate_config::Upstream;
use pingora::protocols::l4::socket::SocketAddr as PingoraAddr;
use pingora::protocols::Stream;

/// Why a connection has nowhere to go (`icp_gate_upstream_errors_total{reason}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DestinationError {
    /// An `original_destination` listener got a connection that was not redirected to it (no
    /// `SO_ORIGINAL_DST`, and not a transparent listener).
    NoOriginalDestination,
    /// The original destination is one of the gate's own listening addresses.
    Loop(SocketAddr),
    /// The original destination is outside `original_destination_allow`.
    NotAllowed(SocketAddr),
}

impl DestinationError {
    pub const REASONS: [&'static str; 3] = ["no_original_destination", "loop", "not_allowed"];

    pub fn reason(self) -> &'static str {
        match self {
            DestinationError::NoOriginalDestination => Self::REASONS[0],
            DestinationError::Loop(_) => Self::REASONS[1],
            DestinationError::NotAllowed(_) => Self::REASONS[2],
        }
    }
}

impl std::fmt::Display for DestinationError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DestinationError::NoOriginalDestination => {
                f.write_str("the connection has no original destination (it was not redirected)")
            }
            DestinationError::Loop(a) => write!(
                f,
                "the original destination {a} is one of the gate's own listening addresses"
            ),
            DestinationError::NotAllowed(a) => write!(
                f,
                "the original destination {a} is outside original_destination_allow"
            ),
        }
    }
}

/// A listener's forwarding targets.
pub struct Destinations {
    upstream: Upstream,
    next: AtomicUsize,
    /// Every address the gate listens on (all listeners and the admin listener).
    own: Vec<SocketAddr>,
    transparent: bool,
}

/// The addresses to try for one connection, in order.
pub enum Candidates<'a> {
    /// The listener's servers, starting at `first` (round robin), each tried once.
    Servers {
        servers: &'a [SocketAddr],
        first: usize,
    },
    /// The connection's original destination.
    One(SocketAddr),
}

impl Candidates<'_> {
    pub fn len(&self) -> usize {
        match self {
            Candidates::Servers { servers, .. } => servers.len(),
            Candidates::One(_) => 1,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The `attempt`th address to try (0-based, below `len()`).
    pub fn get(&self, attempt: usize) -> SocketAddr {
        match self {
            Candidates::Servers { servers, first } => servers[(first + attempt) % servers.len()],
            Candidates::One(a) => *a,
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        (0..self.len()).map(|i| self.get(i))
    }
}

/// The addresses of a client connection that forwarding looks at.
#[derive(Clone, Copy, Debug, Default)]
pub struct ConnAddrs {
    pub local: Option<SocketAddr>,
    /// `SO_ORIGINAL_DST`, when the kernel has one (a NAT `REDIRECT`).
    pub original_dst: Option<SocketAddr>,
}

impl ConnAddrs {
    /// Reads the addresses of a connection: `want_original` asks for `SO_ORIGINAL_DST` too (a
    /// system call; only `original_destination` listeners and TLS decisions without SNI need it).
    pub fn of(stream: &Stream, want_original: bool) -> Self {
        let Some(digest) = stream.get_socket_digest() else {
            return ConnAddrs::default();
        };
        let inet = |a: Option<&PingoraAddr>| a.and_then(PingoraAddr::as_inet).copied();
        ConnAddrs {
            local: inet(digest.local_addr()),
            original_dst: if want_original {
                inet(digest.original_dst())
            } else {
                None
            },
        }
    }
}

impl ConnAddrs {
    /// The client's address.
    pub fn peer(stream: &Stream) -> Option<SocketAddr> {
        let digest = stream.get_socket_digest()?;
        digest.peer_addr().and_then(PingoraAddr::as_inet).copied()
    }
}

impl Destinations {
    pub fn new(upstream: Upstream, own: Vec<SocketAddr>, transparent: bool) -> Self {
        Destinations {
            upstream,
            next: AtomicUsize::new(0),
            own,
            transparent,
        }
    }

    pub fn is_original_destination(&self) -> bool {
        matches!(self.upstream, Upstream::OriginalDestination { .. })
    }

    /// Where the client sent this connection: the local address on a transparent listener,
    /// else `SO_ORIGINAL_DST`. Also the address a TLS connection without SNI is decided on,
    /// falling back to the local address when the connection was not redirected.
    pub fn original_destination(&self, conn: &ConnAddrs) -> Option<SocketAddr> {
        if self.transparent {
            conn.local
        } else {
            conn.original_dst
        }
    }

    /// The address a connection without SNI (or an HTTP request by bare IP) was made to.
    pub fn destination_ip(&self, conn: &ConnAddrs) -> Option<IpAddr> {
        self.original_destination(conn)
            .or(conn.local)
            .map(|a| canonical_ip(a.ip()))
    }

    /// The addresses to try for one connection.
    pub fn candidates(&self, conn: &ConnAddrs) -> Result<Candidates<'_>, DestinationError> {
        match &self.upstream {
            Upstream::Servers(servers) => Ok(Candidates::Servers {
                servers,
                first: self.next.fetch_add(1, Ordering::Relaxed),
            }),
            Upstream::OriginalDestination { allow } => {
                let dst = self
                    .original_destination(conn)
                    .ok_or(DestinationError::NoOriginalDestination)?;
                let dst = SocketAddr::new(canonical_ip(dst.ip()), dst.port());
                if self.is_own(dst, conn.local) {
                    return Err(DestinationError::Loop(dst));
                }
                if !allow.is_empty() && !allow.iter().any(|net| net.contains(&dst.ip())) {
                    return Err(DestinationError::NotAllowed(dst));
                }
                Ok(Candidates::One(dst))
            }
        }
    }

    /// Whether `dst` is one of the gate's own listening addresses. A listener bound to a
    /// wildcard address listens on every local address: `dst` on its port counts as its own when
    /// `dst` is a loopback address or the address the connection arrived on.
    fn is_own(&self, dst: SocketAddr, local: Option<SocketAddr>) -> bool {
        self.own.iter().any(|own| {
            if own.port() != dst.port() {
                return false;
            }
            if own.ip().is_unspecified() {
                dst.ip().is_loopback() || local.map(|l| canonical_ip(l.ip())) == Some(dst.ip())
            } else {
                canonical_ip(own.ip()) == dst.ip()
            }
        })
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn od(allow: &[&str], own: &[&str], transparent: bool) -> Destinations {
        Destinations::new(
            Upstream::OriginalDestination {
                allow: allow.iter().map(|p| p.parse().unwrap()).collect(),
            },
            own.iter().map(|s| a(s)).collect(),
            transparent,
        )
    }

    fn conn(local: &str, original: Option<&str>) -> ConnAddrs {
        ConnAddrs {
            local: Some(a(local)),
            original_dst: original.map(a),
        }
    }

    #[test]
    fn servers_are_taken_in_turn_each_once() {
        let d = Destinations::new(
            Upstream::Servers(vec![a("127.0.0.1:1"), a("127.0.0.1:2"), a("127.0.0.1:3")]),
            vec![],
            false,
        );
        let c = ConnAddrs::default();
        let first: Vec<_> = d.candidates(&c).unwrap().iter().collect();
        let second: Vec<_> = d.candidates(&c).unwrap().iter().collect();
        assert_eq!(
            first,
            [a("127.0.0.1:1"), a("127.0.0.1:2"), a("127.0.0.1:3")]
        );
        assert_eq!(
            second,
            [a("127.0.0.1:2"), a("127.0.0.1:3"), a("127.0.0.1:1")]
        );
    }

    #[test]
    fn original_destination_after_redirect() {
        let d = od(&[], &["127.0.0.1:8443"], false);
        let got = d
            .candidates(&conn("127.0.0.1:8443", Some("127.0.0.2:443")))
            .unwrap();
        assert_eq!(got.iter().collect::<Vec<_>>(), [a("127.0.0.2:443")]);
        // Not redirected: nowhere to go.
        assert_eq!(
            d.candidates(&conn("127.0.0.1:8443", None)).err(),
            Some(DestinationError::NoOriginalDestination)
        );
    }

    #[test]
    fn transparent_listeners_use_the_local_address() {
        let d = od(&[], &["0.0.0.0:8443"], true);
        let got = d
            .candidates(&conn("10.200.1.10:443", Some("10.9.9.9:1")))
            .unwrap();
        assert_eq!(got.iter().collect::<Vec<_>>(), [a("10.200.1.10:443")]);
    }

    #[test]
    fn a_connection_to_the_gate_itself_is_a_loop() {
        let d = od(&[], &["127.0.0.1:8443", "0.0.0.0:9090"], false);
        // Connected straight to the gate: conntrack reports the gate's own address.
        assert_eq!(
            d.candidates(&conn("127.0.0.1:8443", Some("127.0.0.1:8443")))
                .err(),
            Some(DestinationError::Loop(a("127.0.0.1:8443")))
        );
        // The admin listener on every address: its port on the arrival address or loopback.
        assert_eq!(
            d.candidates(&conn("10.0.0.5:8443", Some("10.0.0.5:9090")))
                .err(),
            Some(DestinationError::Loop(a("10.0.0.5:9090")))
        );
        assert_eq!(
            d.candidates(&conn("10.0.0.5:8443", Some("127.0.0.9:9090")))
                .err(),
            Some(DestinationError::Loop(a("127.0.0.9:9090")))
        );
        // The same port on another host is not the gate.
        assert!(d
            .candidates(&conn("10.0.0.5:8443", Some("10.0.0.6:9090")))
            .is_ok());
        // An IPv4-mapped destination is the IPv4 address.
        assert_eq!(
            d.candidates(&conn("127.0.0.1:8443", Some("[::ffff:127.0.0.1]:8443")))
                .err(),
            Some(DestinationError::Loop(a("127.0.0.1:8443")))
        );
    }

    #[test]
    fn the_allow_list_narrows_destinations() {
        let d = od(
            &["10.200.0.0/16", "192.0.2.7/32"],
            &["127.0.0.1:8443"],
            false,
        );
        let c = |dst: &str| d.candidates(&conn("127.0.0.1:8443", Some(dst)));
        assert!(c("10.200.3.4:443").is_ok());
        assert!(c("192.0.2.7:80").is_ok());
        assert_eq!(
            c("192.0.2.8:80").err(),
            Some(DestinationError::NotAllowed(a("192.0.2.8:80")))
        );
    }

    #[test]
    fn decided_on_the_destination_ip() {
        let redirect = od(&[], &[], false);
        assert_eq!(
            redirect.destination_ip(&conn("127.0.0.1:8443", Some("127.0.0.2:443"))),
            Some("127.0.0.2".parse().unwrap())
        );
        assert_eq!(
            redirect.destination_ip(&conn("[::ffff:127.0.0.1]:8443", None)),
            Some("127.0.0.1".parse().unwrap())
        );
    }
}
