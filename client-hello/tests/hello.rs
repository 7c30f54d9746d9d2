//! The ClientHello reader on built hellos and on real ones (rustls's client, OpenSSL's
//! s_client): framing across records and segments, the 16 KiB cap, NotTls, the extension walk.
//! Every case goes through `support::read`, which also feeds the bytes one at a time and in
//! segments and requires the same answer.

mod support;

use icp_gate_client_hello::{parse, HelloError, Progress, Scanner, MAX_CLIENT_HELLO_BYTES};
use support::*;

fn malformed(buf: &[u8]) -> &'static str {
    match refusal(buf) {
        HelloError::Malformed(what) => what,
        other => panic!("expected Malformed, got {other:?}"),
    }
}

#[test]
fn rustls_hello_in_one_record() {
    let wire = rustls_client_hello("example.com", true);
    let h = hello(&wire);
    assert_eq!(h.sni.as_deref(), Some(&b"example.com"[..]));
    assert_eq!(h.alpn, [b"h2".to_vec(), b"http/1.1".to_vec()]);
    assert!(h.has_alpn);
    assert_eq!(h.records, 1);
    assert_eq!(h.wire_len, wire.len());
    assert!(h.borrowed, "one record: the message is borrowed");
    assert_eq!(h.legacy_version, 0x0303);
    // TLS 1.3 first, then TLS 1.2 when rustls is built with its tls12 feature (a workspace
    // build is: the end-to-end tests enable it).
    assert!(
        h.versions == [0x0304] || h.versions == [0x0304, 0x0303],
        "{:x?}",
        h.versions
    );
    assert!(!h.has_ech);
    assert_eq!(h.message_len, wire.len() - 5);
    assert_eq!(h.extension_count, h.extension_types.len());
    assert!(h.extension_count > 5);
}

#[test]
fn classic_sized_hello_of_517_bytes() {
    // Chrome and Firefox pad to 512 bytes of message (RFC 7685): 517 on the wire.
    let base = Hello::new().sni(b"www.example.com").alpn(&[b"h2"]).grease();
    let pad = 512 - base.message().len() - 4;
    let wire = base.padding(pad).wire();
    assert_eq!(wire.len(), 517);
    let h = hello(&wire);
    assert_eq!(h.sni.as_deref(), Some(&b"www.example.com"[..]));
    assert_eq!((h.wire_len, h.records), (517, 1));
}

#[test]
fn post_quantum_sized_hello() {
    let wire = Hello::new()
        .sni(b"pq.example")
        .alpn(&[b"h2", b"http/1.1"])
        .grease()
        .post_quantum()
        .ech()
        .wire();
    assert!((1600..=2100).contains(&wire.len()), "{}", wire.len());
    let h = hello(&wire);
    assert_eq!(h.sni.as_deref(), Some(&b"pq.example"[..]));
    assert!(h.has_ech);
    assert_eq!(h.wire_len, wire.len());
}

#[test]
fn split_into_2_5_and_64_records() {
    let msg = Hello::new().sni(b"split.example").post_quantum().message();
    for n in [2, 5, 64] {
        let wire = split_even(&msg, n);
        let h = hello(&wire);
        assert_eq!(h.records, n, "{n} records");
        assert_eq!(h.wire_len, wire.len());
        assert_eq!(h.message, msg, "{n} records: reassembled");
        assert!(!h.borrowed, "{n} records: copied");
        assert_eq!(h.sni.as_deref(), Some(&b"split.example"[..]));
    }
}

#[test]
fn rustls_hello_split_in_one_byte_records() {
    let wire = rustls_client_hello("bytes.example", true);
    let msg = &wire[5..];
    let split = records(msg, &vec![1; msg.len()]);
    let h = hello(&split);
    assert_eq!(h.records, msg.len());
    assert_eq!(h.message, msg);
    assert_eq!(h.sni.as_deref(), Some(&b"bytes.example"[..]));
}

#[test]
fn handshake_header_split_across_records() {
    let msg = Hello::new().sni(b"hdr.example").message();
    for first in 1..4 {
        let wire = records(&msg, &[first, 1]);
        let h = hello(&wire);
        assert_eq!(h.message, msg, "header split after {first} bytes");
        assert_eq!(h.records, 3);
    }
}

#[test]
fn fed_one_byte_at_a_time_decides_exactly_at_the_end() {
    // Split mid record header and mid handshake header by TCP, and over records.
    let msg = Hello::new().sni(b"slow.example").message();
    for wire in [
        one_record(&msg),
        records(&msg, &[2, 100]),
        split_even(&msg, 5),
    ] {
        let (r, decided) = read_bytewise(&wire);
        assert_eq!(r, read_whole(&wire));
        assert_eq!(
            decided,
            Some(wire.len()),
            "complete exactly at the last byte"
        );
    }
}

#[test]
fn last_record_may_carry_a_following_message() {
    let mut msg = Hello::new().sni(b"more.example").message();
    let hello_len = msg.len();
    msg.extend_from_slice(&handshake(20, &[0; 12]));
    let wire = one_record(&msg);
    let h = hello(&wire);
    assert_eq!(h.wire_len, wire.len(), "the whole record counts");
    assert_eq!(h.message.len(), hello_len, "the message alone");
    let (_, decided) = read_bytewise(&wire);
    assert_eq!(decided, Some(wire.len()), "waits for the whole record");
}

#[test]
fn bytes_after_the_hello_are_not_read() {
    let mut wire = Hello::new().sni(b"a.example").wire();
    let len = wire.len();
    wire.extend_from_slice(&record(23, b"early data"));
    wire.extend_from_slice(b"GET / HTTP/1.1\r\n");
    let h = hello(&wire);
    assert_eq!(h.wire_len, len);
}

#[test]
fn hello_of_20_kib_is_too_large_before_it_is_read() {
    let msg = Hello::new()
        .sni(b"big.example")
        .padding(20 * 1024)
        .message();
    let wire = split_even(&msg, 2);
    assert_eq!(refusal(&wire), HelloError::TooLarge);
    let (_, decided) = read_bytewise(&wire);
    // The handshake header announces 20 KiB in the first record: decided after its 4 bytes.
    assert_eq!(decided, Some(9));
}

#[test]
fn too_large_by_wire_bytes_in_small_records() {
    // A 15 KiB message in 1 KiB records needs 15 record headers more: 15_435 wire bytes fit,
    // 16 KiB of message in 100-byte records does not, though the message alone would.
    let msg = Hello::new().padding(15 * 1024).message();
    assert_eq!(hello(&split_even(&msg, 15)).records, 15);
    let msg = Hello::new().padding(16 * 1024 - 400).message();
    assert!(msg.len() < MAX_CLIENT_HELLO_BYTES);
    let wire = records(&msg, &vec![100; msg.len() / 100]);
    assert!(wire.len() > MAX_CLIENT_HELLO_BYTES);
    assert_eq!(refusal(&wire), HelloError::TooLarge);
    // A pending hello never needs more than the cap: decided by the time the buffer holds it.
    let (_, decided) = read_bytewise(&wire);
    assert_eq!(decided, Some(MAX_CLIENT_HELLO_BYTES));
}

#[test]
fn the_cap_is_exact() {
    // A message whose single record ends exactly at the cap is accepted; one byte more is not.
    let base = Hello::new().padding(0);
    let fill = MAX_CLIENT_HELLO_BYTES - 5 - base.message().len();
    let wire = Hello::new().padding(fill).wire();
    assert_eq!(wire.len(), MAX_CLIENT_HELLO_BYTES);
    assert_eq!(hello(&wire).wire_len, MAX_CLIENT_HELLO_BYTES);
    let wire = Hello::new().padding(fill + 1).wire();
    assert_eq!(refusal(&wire), HelloError::TooLarge);
    // Trailing bytes of a long record count too.
    let mut msg = Hello::new().message();
    msg.resize(MAX_CLIENT_HELLO_BYTES - 4, 0);
    assert_eq!(refusal(&one_record(&msg)), HelloError::TooLarge);
}

#[test]
fn a_handshake_length_past_the_cap_is_too_large_at_once() {
    let msg = Hello::new().padding(20_000).message();
    let mut scanner = Scanner::new();
    // A 16,000-byte first record fits; the handshake length alone says the message cannot.
    assert_eq!(
        scanner.scan(&records(&msg, &[16_000])[..9]),
        Err(HelloError::TooLarge)
    );
}

#[test]
fn no_sni() {
    let h = hello(&Hello::new().wire());
    assert_eq!(h.sni, None);
    let h = hello(&rustls_client_hello("nosni.example", false));
    assert_eq!(h.sni, None);
    assert_eq!(h.alpn.len(), 2);
}

#[test]
fn no_extensions_block_at_all() {
    let h = hello(&Hello::new().no_extensions().wire());
    assert_eq!(h.sni, None);
    assert_eq!(h.extension_count, 0);
    assert!(h.versions.is_empty());
    assert!(!h.has_alpn);
    // An empty block is legal too.
    let mut e = Hello::new();
    e.extensions = Some(vec![]);
    assert_eq!(hello(&e.wire()).extension_count, 0);
}

#[test]
fn sni_is_returned_raw() {
    for name in [
        &b"192.0.2.1"[..],
        b"2001:db8::1",
        b"Example.COM.",
        b"WWW.EXAMPLE.COM",
        "bücher.example".as_bytes(),
        "例子.测试".as_bytes(),
        b"\xff\xfe",
        b"a b",
    ] {
        let h = hello(&Hello::new().sni(name).wire());
        assert_eq!(h.sni.as_deref(), Some(name));
    }
}

#[test]
fn openssl_s_client_fixture() {
    // Captured from `openssl s_client -connect 127.0.0.1:<port> -servername Example.COM.
    // -alpn h2,http/1.1` (OpenSSL 3.0.22) by a Python socket that only recorded the bytes.
    let wire = include_bytes!("fixtures/openssl-3.0-s_client.bin");
    let h = hello(wire);
    assert_eq!(h.sni.as_deref(), Some(&b"Example.COM."[..]));
    assert_eq!(h.alpn, [b"h2".to_vec(), b"http/1.1".to_vec()]);
    assert_eq!(h.versions, [0x0304, 0x0303, 0x0302, 0x0301]);
    assert_eq!(h.wire_len, wire.len());
}

#[test]
fn plain_http_is_not_tls_after_one_byte() {
    let get = b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n";
    assert_eq!(refusal(get), HelloError::NotTls);
    assert_eq!(read_bytewise(get).1, Some(1));
    for first in [0u8, 0x14, 0x15, 0x17, 0x18, 0x80, 0xff, b'P', b'C'] {
        assert_eq!(Scanner::new().scan(&[first]), Err(HelloError::NotTls));
    }
}

#[test]
fn sslv2_hello_is_not_tls() {
    // An SSLv2-compatible CLIENT-HELLO: 2-byte length with the high bit set, msg type 1, 3.1.
    let v2 = [
        0x80, 0x2e, 0x01, 0x03, 0x01, 0x00, 0x15, 0x00, 0x00, 0x00, 0x10, 0x00, 0x00, 0x05,
    ];
    assert_eq!(refusal(&v2), HelloError::NotTls);
    assert_eq!(read_bytewise(&v2).1, Some(1));
}

#[test]
fn record_version_major_not_3_is_not_tls_after_two_bytes() {
    let mut wire = Hello::new().wire();
    wire[1] = 2;
    assert_eq!(refusal(&wire), HelloError::NotTls);
    assert_eq!(read_bytewise(&wire).1, Some(2));
    // minor 0..=4 is accepted, above is not
    for minor in 0..=4 {
        let mut wire = Hello::new().wire();
        wire[2] = minor;
        hello(&wire);
    }
    let mut wire = Hello::new().wire();
    wire[2] = 5;
    assert_eq!(malformed(&wire), "record version minor above 4");
}

#[test]
fn truncated_is_need_more_never_complete() {
    let wire = Hello::new().sni(b"t.example").ech().wire();
    for n in 0..wire.len() {
        assert_eq!(
            Scanner::new().scan(&wire[..n]),
            Ok(Progress::NeedMore),
            "{n} bytes"
        );
    }
    let wire = split_even(&Hello::new().message(), 5);
    for n in 0..wire.len() {
        assert_eq!(read_whole(&wire[..n]), Read::NeedMore, "{n} bytes");
    }
}

#[test]
fn duplicate_extension_is_malformed() {
    let wire = Hello::new()
        .sni(b"a.example")
        .ext(EXT_ALPN, &u16_prefixed(&u8_prefixed(b"h2")))
        .ext(EXT_ALPN, &u16_prefixed(&u8_prefixed(b"h2")))
        .wire();
    assert_eq!(malformed(&wire), "duplicate extension type");
    let wire = Hello::new().ext(0x1a1a, &[]).ext(0x1a1a, &[]).wire();
    assert_eq!(malformed(&wire), "duplicate extension type", "GREASE too");
    let wire = Hello::new().ext(0xffff, &[]).ext(0xffff, &[1]).wire();
    assert_eq!(malformed(&wire), "duplicate extension type", "0xffff");
    let wire = Hello::new()
        .sni(b"a.example")
        .ext(EXT_SERVER_NAME, &sni_ext(&[(0, b"b.example")]))
        .wire();
    assert_eq!(
        malformed(&wire),
        "duplicate extension type",
        "two server_name"
    );
}

#[test]
fn ech_and_grease_are_accepted() {
    let wire = Hello::new()
        .sni(b"public.example")
        .alpn(&[b"h2"])
        .grease()
        .ech()
        .wire();
    let h = hello(&wire);
    assert!(h.has_ech);
    assert_eq!(h.sni.as_deref(), Some(&b"public.example"[..]));
    assert_eq!(h.versions, [0x7a7a, 0x0304, 0x0303]);
    assert_eq!(h.extension_types[0], 0x0a0a);
    assert_eq!(h.extension_types[h.extension_types.len() - 2], 0xfafa);
    // The ECH extension's content is not checked: an empty one is still "present".
    assert!(hello(&Hello::new().ext(EXT_ECH, &[]).wire()).has_ech);
}

#[test]
fn alert_interleaved_is_malformed() {
    let msg = Hello::new().message();
    let mut wire = record(22, &msg[..50]);
    wire.extend(record(21, &[2, 40]));
    wire.extend(record(22, &msg[50..]));
    assert_eq!(
        malformed(&wire),
        "non-handshake record before the hello is complete"
    );
    assert_eq!(read_bytewise(&wire).1, Some(55 + 1));
    // ChangeCipherSpec and application data likewise
    for ct in [20u8, 23] {
        let mut wire = record(22, &msg[..50]);
        wire.push(ct);
        assert!(matches!(refusal(&wire), HelloError::Malformed(_)));
    }
}

#[test]
fn handshake_type_2_is_malformed() {
    let mut h = Hello::new();
    h.handshake_type = 2;
    let wire = h.wire();
    assert_eq!(malformed(&wire), "handshake type is not client_hello");
    assert_eq!(read_bytewise(&wire).1, Some(6), "after the first body byte");
}

#[test]
fn zero_length_and_oversized_records_are_malformed() {
    let msg = Hello::new().message();
    let mut wire = record(22, &[]);
    wire.extend(one_record(&msg));
    assert_eq!(malformed(&wire), "zero-length record");
    let mut wire = record(22, &msg[..10]);
    wire.extend(record(22, &[]));
    wire.extend(record(22, &msg[10..]));
    assert_eq!(malformed(&wire), "zero-length record");
    assert_eq!(read_bytewise(&wire).1, Some(15 + 5));
    let wire = [22, 3, 1, 0x40, 0x01];
    assert_eq!(malformed(&wire), "record longer than 2^14");
}

#[test]
fn bad_lengths_are_malformed() {
    let good = Hello::new().sni(b"x.example").alpn(&[b"h2"]).message();
    // Trailing bytes inside the hello body.
    let mut body = good[4..].to_vec();
    body.push(0);
    assert_eq!(
        malformed(&one_record(&handshake(1, &body))),
        "trailing bytes after the extensions block"
    );
    // Every truncation of the body, with the handshake length fixed up, is refused by parse.
    for cut in 0..good.len() - 4 {
        let msg = handshake(1, &good[4..4 + cut]);
        let ok_without_extensions = cut == 2 + 32 + 1 + 32 + 2 + 10 + 1 + 1;
        if ok_without_extensions {
            assert!(parse(&msg).is_ok());
        } else {
            assert!(
                matches!(parse(&msg), Err(HelloError::Malformed(_))),
                "cut at {cut}"
            );
        }
    }
    // The handshake length disagreeing with the message given to parse.
    let mut msg = good.clone();
    msg[3] ^= 1;
    assert_eq!(
        parse(&msg),
        Err(HelloError::Malformed(
            "handshake length does not match the message"
        ))
    );
}

#[test]
fn session_id_cipher_suites_and_compression_are_checked() {
    let mut h = Hello::new();
    h.session_id = vec![1; 33];
    assert_eq!(malformed(&h.wire()), "session_id longer than 32 bytes");
    let mut h = Hello::new();
    h.cipher_suites = vec![];
    assert_eq!(malformed(&h.wire()), "cipher_suites empty or of odd length");
    let mut h = Hello::new();
    h.compression = vec![];
    assert_eq!(malformed(&h.wire()), "compression_methods empty");
    // odd cipher_suites length, by hand
    let mut body = vec![3, 3];
    body.extend([0; 32]);
    body.push(0);
    body.extend([0, 3, 0x13, 0x01, 0x13, 1, 0]);
    assert_eq!(
        malformed(&one_record(&handshake(1, &body))),
        "cipher_suites empty or of odd length"
    );
}

#[test]
fn server_name_rules() {
    let two = Hello::new().set_ext(
        EXT_SERVER_NAME,
        &sni_ext(&[(0, b"a.example"), (0, b"b.example")]),
    );
    assert_eq!(
        malformed(&two.wire()),
        "more than one host_name in server_name"
    );
    let empty = Hello::new().set_ext(EXT_SERVER_NAME, &sni_ext(&[(0, b"")]));
    assert_eq!(malformed(&empty.wire()), "empty host_name");
    let empty_list = Hello::new().set_ext(EXT_SERVER_NAME, &u16_prefixed(&[]));
    assert_eq!(malformed(&empty_list.wire()), "empty server_name list");
    let empty_ext = Hello::new().set_ext(EXT_SERVER_NAME, &[]);
    assert!(matches!(
        refusal(&empty_ext.wire()),
        HelloError::Malformed(_)
    ));
    // An entry of another name type is refused, before or after the host_name (OpenSSL and
    // BoringSSL refuse it too; an origin could read such a list differently).
    for entries in [
        &[(1, &b"opaque"[..]), (0, b"c.example")][..],
        &[(0, b"c.example"), (7, b"")],
        &[(1, b"x")],
    ] {
        let other = Hello::new().set_ext(EXT_SERVER_NAME, &sni_ext(entries));
        assert_eq!(
            malformed(&other.wire()),
            "server_name entry of a name type other than host_name"
        );
    }
    // A name longer than the list.
    let mut data = sni_ext(&[(0, b"d.example")]);
    data[4] += 1;
    let mut data2 = sni_ext(&[(0, b"d.example")]);
    data2[1] += 1; // the list runs past the extension
    assert!(matches!(
        refusal(&Hello::new().set_ext(EXT_SERVER_NAME, &data).wire()),
        HelloError::Malformed(_)
    ));
    assert!(matches!(
        refusal(&Hello::new().set_ext(EXT_SERVER_NAME, &data2).wire()),
        HelloError::Malformed(_)
    ));
}

#[test]
fn alpn_rules() {
    let h = hello(&Hello::new().alpn(&[b"h2", b"http/1.1", b"\x00\xff"]).wire());
    assert_eq!(
        h.alpn,
        [b"h2".to_vec(), b"http/1.1".to_vec(), b"\x00\xff".to_vec()]
    );
    assert_eq!(malformed(&Hello::new().alpn(&[]).wire()), "empty ALPN list");
    assert_eq!(
        malformed(&Hello::new().alpn(&[b"h2", b""]).wire()),
        "empty ALPN protocol name"
    );
    let mut data = u16_prefixed(&u8_prefixed(b"h2"));
    data[2] = 3; // name runs past the list
    assert_eq!(
        malformed(&Hello::new().set_ext(EXT_ALPN, &data).wire()),
        "ALPN name longer than the list"
    );
    let mut data = u16_prefixed(&u8_prefixed(b"h2"));
    data.push(0);
    assert_eq!(
        malformed(&Hello::new().set_ext(EXT_ALPN, &data).wire()),
        "trailing bytes after the ALPN list"
    );
}

#[test]
fn supported_versions_rules() {
    let sv = |d: &[u8]| Hello::new().set_ext(EXT_SUPPORTED_VERSIONS, d).wire();
    assert_eq!(hello(&sv(&[2, 3, 4])).versions, [0x0304]);
    assert_eq!(
        malformed(&sv(&[3, 3, 4, 3])),
        "supported_versions list empty or of odd length"
    );
    assert_eq!(
        malformed(&sv(&[0])),
        "supported_versions list empty or of odd length"
    );
    assert_eq!(
        malformed(&sv(&[2, 3, 4, 0])),
        "trailing bytes after the supported_versions list"
    );
    assert!(matches!(refusal(&sv(&[4, 3, 4])), HelloError::Malformed(_)));
}

#[test]
fn extension_longer_than_the_block_is_malformed() {
    let mut msg = Hello::new().sni(b"e.example").message();
    // The last extension (server_name) claims one byte more; fix up nothing else.
    let n = msg.len();
    let name_len_at = n - 9 - 2 - 1 - 2 - 2; // ext len field of server_name
    msg[name_len_at + 1] += 1;
    assert!(matches!(
        refusal(&one_record(&msg)),
        HelloError::Malformed(_)
    ));
}

#[test]
fn reasons() {
    assert_eq!(HelloError::NotTls.reason(), "not_tls");
    assert_eq!(HelloError::TooLarge.reason(), "client_hello_too_large");
    assert_eq!(
        HelloError::Malformed("x").reason(),
        "client_hello_malformed"
    );
}

#[test]
fn scanner_answers_the_same_after_deciding() {
    let wire = Hello::new().wire();
    let mut s = Scanner::new();
    let first = s.scan(&wire);
    assert!(matches!(first, Ok(Progress::Complete { .. })));
    assert_eq!(s.scan(&wire), first);
    let mut s = Scanner::new();
    assert_eq!(s.scan(b"G"), Err(HelloError::NotTls));
    assert_eq!(s.scan(&wire), Err(HelloError::NotTls));
}
