//! The invariants of the `client_hello` fuzz target, shared with the corpus replay
//! (`tests/fuzz_corpus.rs`) and included by `fuzz/fuzz_targets/client_hello.rs`. It uses only
//! `icp-gate-client-hello`. Each check returns `Err(description)`.
//!
//! For arbitrary bytes:
//! - `Scanner::scan` on the whole input says exactly what a plain, non-incremental reference
//!   framer below says (same progress, same error).
//! - Fed one byte at a time and in chunks chosen from the input, the scanner says the same, and
//!   never changes its answer once it has one; NotTls is decided by the first 2 bytes, Complete
//!   exactly when the last record is in, and nothing is pending past MAX_CLIENT_HELLO_BYTES.
//! - A complete hello: `wire_len` within the input and the cap, `records` records of which the
//!   last ends at `wire_len`; `handshake_message` is the reference's reassembly, borrowed exactly
//!   when it sat in one record.
//! - `parse`, on that message and on the raw input itself: no panic; an accepted hello agrees
//!   with an independent walk of its extensions (SNI, ALPN, versions, ECH, count, no duplicate).

use icp_gate_client_hello::{
    handshake_message, parse, HelloError, Progress, Scanner, MAX_CLIENT_HELLO_BYTES,
};
use std::borrow::Cow;

type Scan = Result<Progress, HelloError>;

fn u24(b: &[u8]) -> usize {
    (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2])
}

/// The framing rules written plainly: walk the records of the whole buffer, append record
/// bodies to a message, and look at the message after each record.
pub fn reference_scan(buf: &[u8]) -> (Scan, Vec<u8>) {
    let mut msg: Vec<u8> = Vec::new();
    let mut pos = 0;
    let mut records = 0;
    let need_more = |buf: &[u8]| {
        if buf.len() >= MAX_CLIENT_HELLO_BYTES {
            Err(HelloError::TooLarge)
        } else {
            Ok(Progress::NeedMore)
        }
    };
    loop {
        let header = &buf[pos.min(buf.len())..];
        let first = records == 0;
        if !header.is_empty() && header[0] != 22 {
            let e = if first {
                HelloError::NotTls
            } else {
                HelloError::Malformed("non-handshake record before the hello is complete")
            };
            return (Err(e), msg);
        }
        if header.len() >= 2 && header[1] != 3 {
            let e = if first {
                HelloError::NotTls
            } else {
                HelloError::Malformed("record version major is not 3")
            };
            return (Err(e), msg);
        }
        if header.len() >= 3 && header[2] > 4 {
            return (
                Err(HelloError::Malformed("record version minor above 4")),
                msg,
            );
        }
        if header.len() < 5 {
            return (need_more(buf), msg);
        }
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if len == 0 {
            return (Err(HelloError::Malformed("zero-length record")), msg);
        }
        if len > 16384 {
            return (Err(HelloError::Malformed("record longer than 2^14")), msg);
        }
        let end = pos + 5 + len;
        if end > MAX_CLIENT_HELLO_BYTES {
            return (Err(HelloError::TooLarge), msg);
        }
        records += 1;
        let before = msg.len();
        let body = &buf[pos + 5..end.min(buf.len())];
        // The handshake type is judged on its first byte, the length once its 4 bytes are in.
        let header_in_this_record = before < 4;
        msg.extend_from_slice(body);
        if msg.len() > before && before == 0 && msg[0] != 1 {
            return (
                Err(HelloError::Malformed("handshake type is not client_hello")),
                msg,
            );
        }
        if msg.len() < 4 {
            if body.len() < len {
                return (need_more(buf), msg);
            }
            pos = end;
            continue;
        }
        let total = 4 + u24(&msg[1..4]);
        // Message bytes carried up to the end of this record, whether arrived or not.
        let through_record = before + len;
        if header_in_this_record && total > through_record {
            let beyond = total - through_record;
            let least = end + beyond + beyond.div_ceil(16384) * 5;
            if least > MAX_CLIENT_HELLO_BYTES {
                return (Err(HelloError::TooLarge), msg);
            }
        }
        if total <= through_record {
            if buf.len() < end {
                return (need_more(buf), msg);
            }
            msg.truncate(total);
            return (
                Ok(Progress::Complete {
                    wire_len: end,
                    records,
                }),
                msg,
            );
        }
        if body.len() < len {
            return (need_more(buf), msg);
        }
        pos = end;
    }
}

/// Feeds prefixes of `data` to one scanner, at the given cut points, then the whole; returns
/// every answer with the length it was given.
fn feed(data: &[u8], cuts: impl Iterator<Item = usize>) -> Result<Vec<(usize, Scan)>, String> {
    let mut scanner = Scanner::new();
    let mut out: Vec<(usize, Scan)> = Vec::new();
    let mut first_answer: Option<(usize, Scan)> = None;
    for n in cuts.chain(std::iter::once(data.len())) {
        let p = scanner.scan(&data[..n]);
        match first_answer {
            Some((m, prev)) if p != prev => {
                return Err(format!(
                    "the scanner said {prev:?} at {m} bytes, then {p:?} at {n}"
                ));
            }
            None if p != Ok(Progress::NeedMore) => first_answer = Some((n, p)),
            _ => {}
        }
        out.push((n, p));
    }
    Ok(out)
}

pub fn check_client_hello(data: &[u8]) -> Result<(), String> {
    let whole = Scanner::new().scan(data);
    let (reference, ref_msg) = reference_scan(data);
    if whole != reference {
        return Err(format!(
            "scan says {whole:?}, the reference framer {reference:?}"
        ));
    }

    // One byte at a time: decided at the first length where the reference decides.
    let bytewise = feed(data, 0..data.len())?;
    let decided = bytewise
        .iter()
        .find(|(_, p)| *p != Ok(Progress::NeedMore))
        .map(|&(n, _)| n);
    if bytewise.last().map(|&(_, p)| p) != Some(whole) {
        return Err(format!("fed byte by byte it ends with {bytewise:?}"));
    }
    if let Some(n) = decided {
        let (at_n, _) = reference_scan(&data[..n]);
        if at_n != whole {
            return Err(format!(
                "decided at {n} bytes, but the reference says {at_n:?}"
            ));
        }
        if n > 0 {
            let (before, _) = reference_scan(&data[..n - 1]);
            if before != Ok(Progress::NeedMore) {
                return Err(format!("decided at {n} bytes, the reference at fewer"));
            }
        }
        if n > MAX_CLIENT_HELLO_BYTES {
            return Err(format!("decided only after {n} bytes, past the cap"));
        }
        if whole == Err(HelloError::NotTls) && n > 2 {
            return Err(format!("NotTls decided after {n} bytes"));
        }
    }
    // In chunks whose size comes from the input.
    let step = usize::from(data.first().copied().unwrap_or(0)) % 61 + 2;
    let chunked = feed(data, (0..data.len()).step_by(step))?;
    if chunked.last().map(|&(_, p)| p) != Some(whole) {
        return Err(format!("fed in chunks of {step} it ends differently"));
    }

    if let Ok(Progress::Complete { wire_len, records }) = whole {
        if wire_len > data.len() || wire_len > MAX_CLIENT_HELLO_BYTES || records == 0 {
            return Err(format!(
                "Complete {{ {wire_len}, {records} }} on {} bytes",
                data.len()
            ));
        }
        if decided != Some(wire_len) {
            return Err(format!(
                "Complete at {decided:?} bytes, wire_len {wire_len}"
            ));
        }
        let msg = handshake_message(data, wire_len);
        if *msg != *ref_msg {
            return Err("handshake_message differs from the reference reassembly".into());
        }
        if msg.len() < 4 || msg.len() != 4 + u24(&msg[1..4]) {
            return Err("handshake_message is not one whole message".into());
        }
        if matches!(msg, Cow::Borrowed(_)) != (records == 1) {
            return Err(format!(
                "{records} records, borrowed: {}",
                matches!(msg, Cow::Borrowed(_))
            ));
        }
        check_parse(&msg)?;
    }
    // parse on the raw input too, so that the fuzzer reaches it without framing.
    check_parse(data)
}

/// An accepted hello agrees with an independent walk of its message.
fn check_parse(msg: &[u8]) -> Result<(), String> {
    let Ok(h) = parse(msg) else { return Ok(()) };
    if h.message_len != msg.len() || u16::from_be_bytes([msg[4], msg[5]]) != h.legacy_version {
        return Err("message_len or legacy_version wrong".into());
    }
    if h.session_id.len() > 32 || h.compression_methods.is_empty() || h.cipher_suites().count() == 0
    {
        return Err("session_id, compression_methods or cipher_suites out of bounds".into());
    }
    let exts: Vec<(u16, &[u8])> = h.extensions().collect();
    if exts.len() != h.extension_count {
        return Err("extension_count is not the number of extensions".into());
    }
    let mut types: Vec<u16> = exts.iter().map(|e| e.0).collect();
    types.sort_unstable();
    if types.windows(2).any(|w| w[0] == w[1]) {
        return Err(format!("accepted a duplicate extension: {types:?}"));
    }
    let find = |t: u16| exts.iter().find(|e| e.0 == t).map(|e| e.1);
    if h.has_ech != find(0xfe0d).is_some() {
        return Err("has_ech wrong".into());
    }
    // SNI: the host_name entry, walking (type, u16 length, name) entries.
    let mut sni = None;
    if let Some(d) = find(0) {
        let mut list = &d[2..];
        while !list.is_empty() {
            let len = usize::from(u16::from_be_bytes([list[1], list[2]]));
            if list[0] == 0 {
                sni = Some(&list[3..3 + len]);
            }
            list = &list[3 + len..];
        }
    }
    if h.sni != sni || h.sni.is_some_and(<[u8]>::is_empty) {
        return Err(format!("sni {:?}, the extension says {sni:?}", h.sni));
    }
    let alpn: Vec<&[u8]> = h.alpn().collect();
    match find(16) {
        None if h.has_alpn() || !alpn.is_empty() => return Err("ALPN without extension".into()),
        Some(d) => {
            let names: usize = alpn.iter().map(|n| n.len() + 1).sum();
            if alpn.is_empty() || alpn.iter().any(|n| n.is_empty()) || names + 2 != d.len() {
                return Err(format!(
                    "ALPN {alpn:?} from an extension of {} bytes",
                    d.len()
                ));
            }
        }
        None => {}
    }
    let versions: Vec<u16> = h.supported_versions().collect();
    match find(43) {
        None if !versions.is_empty() => return Err("versions without extension".into()),
        Some(d) if versions.is_empty() || versions.len() * 2 + 1 != d.len() => {
            return Err(format!(
                "versions {versions:?} from an extension of {} bytes",
                d.len()
            ));
        }
        _ => {}
    }
    Ok(())
}
