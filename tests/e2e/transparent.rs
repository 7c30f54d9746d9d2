//! Transparent mode: `upstream = "original_destination"` after an iptables `REDIRECT`, and a
//! `transparent = true` (TPROXY) listener, inside a network namespace this test creates
//! (`unshare -n`), so nothing outside it is touched. Every address is on the namespace's own
//! loopback: clients connect from 127.0.0.3 to "customer hosts" 127.0.0.2 (REDIRECT) and
//! 127.0.0.4 (TPROXY), whose real servers listen there; rules match the client's source so that
//! the gate's own connections to those hosts are not redirected back to it.
//!
//! The outer test re-runs this test binary inside the namespace on the `#[ignore]`d inner test;
//! it skips (with a printed reason) only when the process is not root.

use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use crate::harness::*;
use crate::tls_harness::*;

const INNER_ENV: &str = "ICP_GATE_E2E_IN_NETNS";

#[test]
fn original_destination_inside_a_network_namespace() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIP: transparent-mode tests need root (unshare -n, iptables)");
        return;
    }
    let iptables = Command::new("iptables").arg("--version").output();
    assert!(
        iptables.is_ok_and(|o| o.status.success()),
        "iptables is missing: scripts/ensure-deps installs it"
    );
    let exe = std::env::current_exe().unwrap();
    let out = Command::new("unshare")
        .arg("-n")
        .arg("--")
        .arg(exe)
        .args([
            "transparent::inner_in_netns",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(INNER_ENV, "1")
        .output()
        .expect("running unshare");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "inside the namespace:\n{stdout}\n{stderr}"
    );
}

fn sh(cmd: &str) {
    let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A TCP connection from `src` (an address of the namespace's loopback) to `dst`.
fn connect_from(src: &str, dst: SocketAddr) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let src: SocketAddr = format!("{src}:0").parse().unwrap();
    socket.bind(&src.into()).unwrap();
    socket.connect(&dst.into()).unwrap();
    let stream: TcpStream = socket.into();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream
}

#[test]
#[ignore = "run inside a network namespace by original_destination_inside_a_network_namespace"]
fn inner_in_netns() {
    assert_eq!(
        std::env::var(INNER_ENV).as_deref(),
        Ok("1"),
        "run by the outer test only"
    );
    sh("ip link set lo up");
    let pki = Pki::new(&["www.example.com", "unfiled.cn"]);
    // The customer hosts' real servers.
    let tls_origin = TlsOrigin::start_on(&pki, "127.0.0.2:443");
    let http_origin = Origin::start_on("127.0.0.2:80");
    let tproxy_origin = TlsOrigin::start_on(&pki, "127.0.0.4:443");

    let http_port = free_port();
    let tproxy_port = free_port();
    let unused = Origin::start();
    let gate = Gate::start(
        &unused,
        GateOptions {
            listener_extra: "protocol = \"tls\"\nupstream = \"original_destination\"".into(),
            extra: format!(
                "[[listener]]\nname = \"http\"\naddress = \"127.0.0.1:{http_port}\"\n\
                 upstream = \"original_destination\"\n\n\
                 [[listener]]\nname = \"tproxy\"\naddress = \"127.0.0.1:{tproxy_port}\"\n\
                 protocol = \"tls\"\ntransparent = true\nupstream = \"original_destination\"\n"
            ),
            ..GateOptions::default()
        },
    );
    let tls_port = gate.addr.port();
    sh(&format!(
        "iptables -t nat -A OUTPUT -s 127.0.0.3 -d 127.0.0.2 -p tcp --dport 443 \
         -j REDIRECT --to-ports {tls_port}"
    ));
    sh(&format!(
        "iptables -t nat -A OUTPUT -s 127.0.0.3 -d 127.0.0.2 -p tcp --dport 80 \
         -j REDIRECT --to-ports {http_port}"
    ));
    sh(&format!(
        "iptables -t mangle -A PREROUTING -s 127.0.0.3 -d 127.0.0.4 -p tcp --dport 443 \
         -j TPROXY --on-ip 127.0.0.1 --on-port {tproxy_port} --tproxy-mark 1/1"
    ));
    sh("ip rule add fwmark 1 lookup 100 && ip route add local 0.0.0.0/0 dev lo table 100");

    let customer: SocketAddr = "127.0.0.2:443".parse().unwrap();
    // A filed SNI, headed for 127.0.0.2:443, reaches the server there through the gate: the
    // handshake completes with that server's certificate.
    let stream = connect_from("127.0.0.3", customer);
    let mut client = TlsClient::over(&pki, stream, "www.example.com").unwrap();
    assert!(client
        .get("www.example.com", "/redirected")
        .ends_with("GET /redirected HTTP/1.1"));
    let seen = tls_origin.seen();
    assert_eq!(seen.len(), 1, "the origin on 127.0.0.2:443 served it");
    let m = gate.metrics();
    assert_eq!(
        m.value(
            "icp_gate_tls_connections_total",
            &[
                ("listener", "test"),
                ("decision", "allowed"),
                ("reason", "")
            ]
        ),
        1.0,
        "it went through the gate"
    );
    // An unfiled one gets the alert.
    let mut raw = connect_from("127.0.0.3", customer);
    std::io::Write::write_all(&mut raw, &real_hello(&pki, "unfiled.cn")).unwrap();
    let mut got = Vec::new();
    let _ = std::io::Read::read_to_end(&mut raw, &mut got);
    assert_eq!(got, ALERT);
    assert!(gate.log().contains("original_dst=\"127.0.0.2:443\""));

    // Plain HTTP the same way on port 80.
    let mut http = connect_from("127.0.0.3", "127.0.0.2:80".parse().unwrap());
    let answer = |s: &mut TcpStream, host: &str| {
        std::io::Write::write_all(
            s,
            format!("GET /p HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .unwrap();
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(s, &mut text);
        text
    };
    let filed = answer(&mut http, "www.example.com");
    assert!(filed.starts_with("HTTP/1.1 200"), "{filed}");
    assert_eq!(http_origin.hosts(), ["www.example.com"]);
    let mut http = connect_from("127.0.0.3", "127.0.0.2:80".parse().unwrap());
    assert!(answer(&mut http, "unfiled.cn").starts_with("HTTP/1.1 403"));
    assert_eq!(http_origin.received().len(), 1);
    // A request with a body is served by Pingora's proxy: it forwards to the same destination.
    let mut http = connect_from("127.0.0.3", "127.0.0.2:80".parse().unwrap());
    std::io::Write::write_all(
        &mut http,
        b"POST /form HTTP/1.1\r\nHost: www.example.com\r\nContent-Length: 5\r\n\
          Connection: close\r\n\r\nhello",
    )
    .unwrap();
    let mut text = String::new();
    let _ = std::io::Read::read_to_string(&mut http, &mut text);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let received = http_origin.received();
    assert_eq!(received.len(), 2);
    assert_eq!(received[1].method, "POST");
    assert_eq!(received[1].body, b"hello");

    // Straight to the gate (not redirected): its original destination is the gate itself, a
    // loop, so nothing is forwarded.
    let mut direct = connect_from("127.0.0.3", gate.addr);
    std::io::Write::write_all(&mut direct, &real_hello(&pki, "www.example.com")).unwrap();
    let mut got = Vec::new();
    let _ = std::io::Read::read_to_end(&mut direct, &mut got);
    assert!(got.is_empty());
    let m = gate.metrics();
    let refused = m.value(
        "icp_gate_upstream_errors_total",
        &[("listener", "test"), ("reason", "loop")],
    ) + m.value(
        "icp_gate_upstream_errors_total",
        &[("listener", "test"), ("reason", "no_original_destination")],
    );
    assert_eq!(refused, 1.0);

    // TPROXY: the transparent listener's connections keep their destination as local address.
    let stream = connect_from("127.0.0.3", "127.0.0.4:443".parse().unwrap());
    let mut client = TlsClient::over(&pki, stream, "www.example.com").unwrap();
    assert!(client
        .get("www.example.com", "/tproxy")
        .ends_with("GET /tproxy HTTP/1.1"));
    assert_eq!(tproxy_origin.seen().len(), 1);
    assert_eq!(
        gate.metrics().value(
            "icp_gate_tls_connections_total",
            &[
                ("listener", "tproxy"),
                ("decision", "allowed"),
                ("reason", "")
            ]
        ),
        1.0
    );
}
