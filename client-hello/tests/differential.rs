//! Differential test: every fuzz corpus file and every built fixture is read by this crate and
//! by rustls's server-side `Acceptor` (`read_tls` from the bytes, then `accept()`), and the two
//! must agree:
//!
//! - both accept, with the same server name (ours lower-cased with one trailing dot stripped, an
//!   IP literal mapped to None, as rustls does), or
//! - both refuse, or both still wait for more bytes,
//!
//! except for these deliberate differences, each checked by a predicate on the input (and, where
//! rustls reports only its first complaint, by fixing that one thing and asking rustls again):
//!
//! 1. `cap`: we refuse a hello needing more than 16 KiB on the wire (`TooLarge`); rustls buffers
//!    up to 64 KiB.
//! 2. `record-minor`: we refuse a record version 3.x with x > 4 (on its third byte); rustls takes
//!    any 3.x.
//! 3. `early`: we refuse on fewer bytes: NotTls after 1-2 bytes, a handshake type other than
//!    client_hello after its first byte, TooLarge from the handshake length; rustls waits for a
//!    whole record header or message (it says NeedMore where we already refuse).
//! 4. `sni-name-type`: we refuse a server_name list with an entry of any name_type other than
//!    host_name (OpenSSL and BoringSSL do too); rustls stops reading the list at such an entry, so
//!    it accepts a host_name followed by one.
//! 5. `sni-dns`: we return the host_name bytes raw; rustls refuses one that is neither a valid
//!    DNS name nor an IP literal. Checking the name is the host normalizer's job.
//! 6. `sig-algs`: rustls refuses a hello without signature_algorithms (it needs one to pick a
//!    certificate); we do not care.
//! 7. `null-compression`: rustls refuses a hello whose compression_methods lack null (0); we only
//!    require the list to be non-empty.
//! 8. `trailing-handshake`: rustls refuses a hello whose last record carries the start of another
//!    handshake message; we count the whole record and stop.
//! 9. `extension-content`: rustls parses the content of extensions we do not read (supported_groups,
//!    key_share, signature_algorithms, ECH, psk, ...) and refuses bad content; we skip it. Checked
//!    by dropping those extensions (and adding a valid signature_algorithms): rustls must then
//!    accept, and the original message in one clean record must still be refused (so that a
//!    framing disagreement cannot hide here).
//!
//! docs/fuzzing.md lists the same exceptions.

mod support;

use icp_gate_client_hello::{parse, HelloError, MAX_CLIENT_HELLO_BYTES};
use rustls::pki_types::ServerName;
use rustls::server::Acceptor;
use rustls::{Error, PeerIncompatible, PeerMisbehaved};
use std::collections::BTreeMap;
use std::path::Path;
use support::*;

#[derive(Debug)]
enum Theirs {
    Accepted(Option<String>),
    NeedMore,
    Refused(Error),
}

fn rustls_read(bytes: &[u8]) -> Theirs {
    let mut acceptor = Acceptor::default();
    let mut rd = bytes;
    loop {
        match acceptor.read_tls(&mut rd) {
            Ok(0) => return Theirs::NeedMore,
            Ok(_) => {}
            Err(e) => return Theirs::Refused(Error::General(e.to_string())),
        }
        match acceptor.accept() {
            Ok(Some(accepted)) => {
                let name = accepted.client_hello().server_name().map(normalize);
                return Theirs::Accepted(name);
            }
            Ok(None) => continue,
            Err((e, _alert)) => return Theirs::Refused(e),
        }
    }
}

/// What rustls would call our SNI: Ok(None) for an IP literal, Err for an invalid name.
fn as_rustls_would(sni: Option<&[u8]>) -> Result<Option<String>, ()> {
    let Some(raw) = sni else { return Ok(None) };
    match ServerName::try_from(raw) {
        Ok(ServerName::DnsName(d)) => Ok(Some(normalize(d.as_ref()))),
        Ok(ServerName::IpAddress(_)) => Ok(None),
        _ => Err(()),
    }
}

fn normalize(name: &str) -> String {
    let lower = name.to_ascii_lowercase();
    lower.strip_suffix('.').map(str::to_owned).unwrap_or(lower)
}

/// The server_name extension's data in a message this crate accepted or refused.
fn raw_extension(msg: &[u8], typ: u16) -> Option<Vec<u8>> {
    // Walk by hand: the message may be one parse refuses.
    let body = msg.get(4..)?;
    let mut p = 2 + 32;
    p += 1 + usize::from(*body.get(p)?);
    p += 2 + usize::from(u16::from_be_bytes([*body.get(p)?, *body.get(p + 1)?]));
    p += 1 + usize::from(*body.get(p)?);
    p += 2;
    while p + 4 <= body.len() {
        let t = u16::from_be_bytes([body[p], body[p + 1]]);
        let len = usize::from(u16::from_be_bytes([body[p + 2], body[p + 3]]));
        let data = body.get(p + 4..p + 4 + len)?;
        if t == typ {
            return Some(data.to_vec());
        }
        p += 4 + len;
    }
    None
}

/// Whether a server_name extension lists an entry of a name_type other than host_name (at a
/// place where rustls reaches it: after zero or more host_name entries).
fn has_other_name_type(msg: &[u8]) -> bool {
    let Some(d) = raw_extension(msg, 0) else {
        return false;
    };
    let mut list = d.get(2..).unwrap_or(&[]);
    while let Some(&t) = list.first() {
        if t != 0 {
            return true;
        }
        let Some(len) = list.get(1..3) else {
            return false;
        };
        let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
        list = list.get(3 + len..).unwrap_or(&[]);
    }
    false
}

/// The message reassembled the plain way (record bodies concatenated, cut to its length).
fn reassemble(bytes: &[u8]) -> Option<Vec<u8>> {
    let mut msg = Vec::new();
    let mut rest = bytes;
    while rest.len() >= 5 {
        let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        let body = rest.get(5..5 + len)?;
        msg.extend_from_slice(body);
        rest = &rest[5 + len..];
        if msg.len() >= 4 {
            let total =
                4 + (usize::from(msg[1]) << 16 | usize::from(msg[2]) << 8 | usize::from(msg[3]));
            if msg.len() >= total {
                msg.truncate(total);
                return Some(msg);
            }
        }
    }
    None
}

/// The message as builder parts, from our parse.
fn to_builder(msg: &[u8]) -> Hello {
    let h = parse(msg).expect("only called on messages we accept");
    let fixed = 4
        + 2
        + 32
        + 1
        + h.session_id.len()
        + 2
        + 2 * h.cipher_suites().count()
        + 1
        + h.compression_methods.len();
    let mut random = [0; 32];
    random.copy_from_slice(&msg[6..38]);
    Hello {
        handshake_type: 1,
        legacy_version: h.legacy_version,
        random,
        session_id: h.session_id.to_vec(),
        cipher_suites: h.cipher_suites().collect(),
        compression: h.compression_methods.to_vec(),
        extensions: (msg.len() > fixed)
            .then(|| h.extensions().map(|(t, d)| (t, d.to_vec())).collect()),
    }
}

/// Extensions rustls parses the content of and we do not read (RFC numbers).
const RUSTLS_PARSES_WE_SKIP: &[u16] = &[
    5, 9, 10, 11, 13, 19, 20, 23, 27, 35, 41, 42, 44, 45, 47, 51, 57, 58, 0xff01, 0xffa5, 0xfe0d,
    0xfd00,
];

/// Compares one input; returns the exceptions used, or Err(why) on a disagreement.
fn compare(bytes: &[u8]) -> Result<Vec<&'static str>, String> {
    let ours = read_whole(bytes);
    let theirs = rustls_read(bytes);
    let mut used = Vec::new();
    match (&ours, &theirs) {
        (Read::NeedMore, Theirs::NeedMore) => Ok(used),
        (Read::Refused(_) | Read::ParseRefused { .. }, Theirs::Refused(_)) => Ok(used),
        (Read::Refused(e), Theirs::NeedMore) => match e {
            HelloError::NotTls | HelloError::TooLarge => Ok(vec!["early"]),
            HelloError::Malformed("handshake type is not client_hello") => Ok(vec!["early"]),
            HelloError::Malformed("record version minor above 4") => Ok(vec!["record-minor"]),
            _ => Err(format!("we refuse ({e:?}), rustls waits for more")),
        },
        (Read::Refused(e) | Read::ParseRefused { error: e, .. }, Theirs::Accepted(_)) => match e {
            HelloError::TooLarge if bytes.len() > MAX_CLIENT_HELLO_BYTES => Ok(vec!["cap"]),
            HelloError::Malformed("record version minor above 4") => Ok(vec!["record-minor"]),
            HelloError::Malformed(_)
                if reassemble(bytes).is_some_and(|m| has_other_name_type(&m)) =>
            {
                Ok(vec!["sni-name-type"])
            }
            _ => Err(format!("we refuse ({e:?}), rustls accepts ({theirs:?})")),
        },
        (Read::Hello(h), _) => {
            // Ask rustls again after removing each difference it reports, at most a few times.
            let mut hello = to_builder(&h.message);
            let mut sni = h.sni.clone();
            let mut wire = bytes.to_vec();
            let mut theirs = theirs;
            for _ in 0..6 {
                let e = match theirs {
                    Theirs::Accepted(name) => {
                        let want = as_rustls_would(sni.as_deref()).map_err(|()| {
                            format!("rustls accepted an SNI it cannot take: {sni:?}")
                        })?;
                        if want == name {
                            return Ok(used);
                        }
                        if name.is_none() && has_other_name_type(&h.message) {
                            used.push("sni-name-type");
                            return Ok(used);
                        }
                        return Err(format!("SNI: ours {want:?}, rustls {name:?}"));
                    }
                    Theirs::NeedMore => return Err("we complete, rustls waits for more".into()),
                    Theirs::Refused(e) => e,
                };
                match &e {
                    Error::PeerIncompatible(
                        PeerIncompatible::SignatureAlgorithmsExtensionRequired,
                    ) if !hello
                        .extensions
                        .iter()
                        .flatten()
                        .any(|x| x.0 == EXT_SIGNATURE_ALGORITHMS) =>
                    {
                        used.push("sig-algs");
                        hello = hello.ext(EXT_SIGNATURE_ALGORITHMS, &u16_prefixed(&[8, 4, 4, 3]));
                    }
                    Error::PeerIncompatible(PeerIncompatible::NullCompressionRequired)
                        if !hello.compression.contains(&0) =>
                    {
                        used.push("null-compression");
                        hello.compression = vec![0];
                    }
                    Error::PeerMisbehaved(PeerMisbehaved::ServerNameMustContainOneHostName)
                        if as_rustls_would(sni.as_deref()).is_err() =>
                    {
                        used.push("sni-dns");
                        sni = Some(b"placeholder.example".to_vec());
                        hello = hello.sni(b"placeholder.example");
                    }
                    Error::PeerMisbehaved(PeerMisbehaved::ServerNameMustContainOneHostName)
                        if has_other_name_type(&hello.message()) =>
                    {
                        // rustls stopped at the other name type before any host_name.
                        used.push("sni-name-type");
                        hello = match &sni {
                            Some(host) => hello.sni(host),
                            None => hello.without_ext(EXT_SERVER_NAME),
                        };
                    }
                    Error::PeerMisbehaved(PeerMisbehaved::KeyEpochWithPendingFragment)
                        if reassemble(&wire).is_some_and(|m| {
                            let framed = h.records * 5 + m.len();
                            framed < h.wire_len.min(wire.len())
                        }) || used.contains(&"trailing-handshake") =>
                    {
                        used.push("trailing-handshake");
                    }
                    Error::InvalidMessage(_) => {
                        // Not a framing difference: the same message alone in one record is
                        // still refused.
                        let msg = hello.message();
                        if !matches!(
                            rustls_read(&one_record(&msg)),
                            Theirs::Refused(Error::InvalidMessage(_))
                        ) {
                            return Err(format!(
                                "rustls refuses the records ({e:?}) but not the message alone"
                            ));
                        }
                        if used.contains(&"extension-content") {
                            return Err(format!("still {e:?} without the extensions we skip"));
                        }
                        used.push("extension-content");
                        if let Some(exts) = &mut hello.extensions {
                            exts.retain(|x| !RUSTLS_PARSES_WE_SKIP.contains(&x.0));
                        }
                        hello = hello.ext(EXT_SIGNATURE_ALGORITHMS, &u16_prefixed(&[8, 4, 4, 3]));
                    }
                    _ => return Err(format!("we accept (SNI {sni:?}), rustls refuses: {e:?}")),
                }
                // Ask again with the fixed hello in one record (the framing has been compared).
                wire = hello.wire();
                theirs = rustls_read(&wire);
            }
            Err(format!("no agreement after {used:?}"))
        }
        _ => Err(format!("ours {ours:?}, rustls {theirs:?}")),
    }
}

fn run(inputs: Vec<(String, Vec<u8>)>) -> BTreeMap<&'static str, usize> {
    let mut failures = Vec::new();
    let mut exceptions: BTreeMap<&'static str, usize> = BTreeMap::new();
    let n = inputs.len();
    for (name, bytes) in inputs {
        match compare(&bytes) {
            Ok(used) => {
                for u in used {
                    *exceptions.entry(u).or_default() += 1;
                }
            }
            Err(why) => failures.push(format!("  {name}: {why}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {n} inputs: this crate and rustls's Acceptor disagree:\n{}",
        failures.len(),
        failures.join("\n")
    );
    eprintln!("{n} inputs agree; documented differences used: {exceptions:?}");
    exceptions
}

#[test]
fn fixtures_agree_with_rustls() {
    let used = run(fixtures()
        .into_iter()
        .map(|(n, b)| (n.to_string(), b))
        .collect());
    // The exceptions the fixtures are built to reach are reached (so each stays exercised).
    for e in [
        "cap",
        "record-minor",
        "early",
        "sni-name-type",
        "sni-dns",
        "sig-algs",
        "null-compression",
        "trailing-handshake",
        "extension-content",
    ] {
        assert!(
            used.contains_key(e),
            "no fixture uses the `{e}` exception: {used:?}"
        );
    }
}

#[test]
fn fuzz_corpus_agrees_with_rustls() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/client_hello");
    let mut inputs = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("the fuzz corpus") {
        let path = entry.expect("a corpus entry").path();
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        inputs.push((name, std::fs::read(&path).expect("a corpus file")));
    }
    assert!(!inputs.is_empty());
    run(inputs);
}

#[test]
fn sni_spellings_agree_with_rustls() {
    for name in [
        &b"Example.COM."[..],
        b"example.com",
        b"xn--bcher-kva.example",
        b"192.0.2.1",
        b"::1",
        b"a_b.example",
        b"a..b",
        b"-a.example",
        "bücher.example".as_bytes(),
    ] {
        let wire = Hello::new().sni(name).wire();
        compare(&wire).unwrap_or_else(|e| panic!("{}: {e}", String::from_utf8_lossy(name)));
    }
}
