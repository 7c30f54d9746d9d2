#!/usr/bin/env python3
"""Writes the hand-made seeds of fuzz/corpus/ (the files whose names are words, not hashes).

Run from anywhere: `python3 fuzz/make_seeds.py`. It overwrites only the seeds it names; inputs
the fuzzer added (named by their SHA-1) are left alone. See docs/fuzzing.md.
"""

import gzip
import hashlib
import os

CORPUS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")


def put(target, name, data):
    if isinstance(data, str):
        data = data.encode("utf-8")
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# --- host -------------------------------------------------------------------------------------

HOSTS = {
    "ascii": b"example.com",
    "ascii-case-port-dot": b"WWW.Example.COM.:8080",
    "underscore": b"_dmarc.my_site.example.com",
    "hyphens": b"-lead.trail-.ab--cd.example.com",
    "single-label": b"localhost",
    "unicode": "例子.中国",
    "ideographic-dots": "例子。中国。",
    "fullwidth-dot": "例子．中国",
    "halfwidth-dot": "ｅｘａｍｐｌｅ｡com",
    "fullwidth-letters": "ＥＸＡＭＰＬＥ.com",
    "fullwidth-digits-ip": "１２７.０.０.１",
    "fullwidth-colon-port": "example.com：80",
    "punycode-upper": b"XN--FSQU00A.xn--fiqs8s",
    "punycode-bucher": b"xn--bcher-kva.de",
    "punycode-invalid": b"xn--a.com",
    "punycode-empty": b"xn--.com",
    "umlaut": "Bücher.de",
    "sharp-s": "faß.de",
    "dotted-capital-i": "İstanbul.com.tr",
    "kelvin-sign": "\u212a.com",
    "soft-hyphen": "ex\u00adample.com",
    "zero-width-joiner": "a\u200db.com",
    "emoji": "☃.net",
    "rtl": "مثال.إختبار",
    "ipv4-port": b"203.0.113.7:80",
    "ipv4-short": b"127.1",
    "ipv4-octal": b"0177.0.0.1",
    "ipv4-integer": b"2130706433",
    "ipv4-hex-label": b"1.2.0x7f",
    "numeric-tld": b"example.123",
    "ipv4-trailing-dot": b"203.0.113.7.",
    "ipv6-port": b"[2001:DB8::1]:443",
    "ipv6-mapped": b"[::ffff:203.0.113.7]",
    "ipv6-zone": b"[fe80::1%25eth0]",
    "ipv6-unclosed": b"[::1",
    "ipv6-bare": b"2001:db8::1",
    "ipv6-bare-short": b"::1",
    "userinfo": b"user@example.com",
    "userinfo-password": b"user:pass@example.com",
    "percent": b"exa%2ample.com",
    "percent-letter": b"%65xample.com",
    "nul": b"example.com\x00",
    "crlf": b"example.com\r\nx",
    "tab": b"exa\tmple.com",
    "space": b" example.com",
    "del": b"example.com\x7f",
    "invalid-utf8": b"ex\xffample.com",
    "overlong-utf8-dot": b"a\xc0\xaecom",
    "port-too-big": b"example.com:99999",
    "port-max": b"example.com:65535",
    "port-empty": b"example.com:",
    "port-plus": b"example.com:+80",
    "port-twice": b"example.com:80:80",
    "empty-label": b"a..example.com",
    "leading-dot": b".example.com",
    "two-trailing-dots": b"example.com..",
    "dot": b".",
    "label-63": b"a" * 63 + b".com",
    "label-64": b"a" * 64 + b".com",
    "name-253": b".".join([b"a" * 63, b"b" * 63, b"c" * 63, b"d" * 61]),
    "name-254": b".".join([b"a" * 63, b"b" * 63, b"c" * 63, b"d" * 62]),
    "raw-over-1024": b"a." * 520 + b"com",
    # Short in Unicode, too long once converted to A-labels.
    "unicode-label-too-long": ("ü" * 60 + ".com").encode(),
    "unicode-name-too-long": ".".join(["例子例子例子例子例子例子"] * 14).encode() + b".cn",
}


# --- snapshot ---------------------------------------------------------------------------------

HEADER = "icp-gate-registry 1 serial=42 generated_at=2026-11-22T03:00:00Z\n"
EXAMPLE = [
    "example.com\tconnected\t京ICP备12345678号-1\n",
    "bad.example.com\tdenied\n",
    "例子.中国\tconnected\t京ICP备87654321号-2\n",
    "cdn-only.cn\tunconnected\t沪ICP备11112222号-1\n",
    "trial.com.cn\tconnected\t粤ICP备33334444号-3\t2026-12-31T00:00:00Z\n",
    "203.0.113.7\tconnected\t京ICP备55556666号-1\n",
]


def snapshot(records, header=HEADER, count=None, newline="\n"):
    """The text of a snapshot with a correct trailer (unless `count` says otherwise)."""
    body = (header + "".join(records)).replace("\n", newline).encode("utf-8")
    n = len(records) if count is None else count
    return body + f"end count={n} sha256={hashlib.sha256(body).hexdigest()}\n".encode()


def gz(data):
    return gzip.compress(data, mtime=0)


example = snapshot(EXAMPLE)
trailer_at = example.rindex(b"end ")
flipped = bytearray(example)
flipped[example.index(b"cdn-only")] ^= 0x01

SNAPSHOTS = {
    "example": example,
    "example-no-final-newline": example[:-1],
    "example-gzip": gz(example),
    "example-gzip-two-members": gz(example[:100]) + gz(example[100:]),
    "example-gzip-truncated": gz(example)[:-9],
    "example-gzip-trailing-garbage": gz(example) + b"garbage",
    "truncated-before-trailer": example[:trailer_at],
    "truncated-mid-record": example[: trailer_at - 5],
    "truncated-mid-trailer": example[: trailer_at + 20],
    "bad-checksum": bytes(flipped),
    "count-mismatch": snapshot(EXAMPLE, count=7),
    "crlf": snapshot(EXAMPLE, newline="\r\n"),
    "empty": b"",
    "zero-records": snapshot([]),
    "header-only": HEADER.encode(),
    "header-version-2": snapshot(EXAMPLE, header=HEADER.replace(" 1 ", " 2 ")),
    "header-no-serial": snapshot(EXAMPLE, header=HEADER.replace("serial=42 ", "")),
    "header-fields-swapped-offset": snapshot(
        EXAMPLE,
        header="icp-gate-registry 1 generated_at=2026-11-22T11:00:00+08:00 serial=18446744073709551615\n",
    ),
    "header-serial-overflow": snapshot(
        EXAMPLE, header=HEADER.replace("serial=42", "serial=18446744073709551616")
    ),
    "header-bom": snapshot(EXAMPLE, header="\ufeff" + HEADER),
    "trailer-fields-swapped-upper-hex": (
        lambda b: b
        + f"end sha256={hashlib.sha256(b).hexdigest().upper()} count=6".encode()
    )((HEADER + "".join(EXAMPLE)).encode()),
    "data-after-trailer": example + b"extra.com\tconnected\n",
    "duplicate-name": snapshot(["example.com\tconnected\n", "EXAMPLE.com.\tdenied\n"]),
    "duplicate-unicode-alabel": snapshot(
        ["例子.中国\tconnected\n", "xn--fsqu00a.xn--fiqs8s\tdenied\n"]
    ),
    "duplicate-ip-mapped": snapshot(
        ["203.0.113.7\tconnected\n", "::ffff:203.0.113.7\tdenied\n"]
    ),
    "public-suffix": snapshot(["com.cn\tconnected\n"]),
    "public-suffix-unicode": snapshot(["中国\tconnected\n"]),
    "private-suffix-ok": snapshot(["github.io\tconnected\n", "[2001:db8::1]\tdenied\n"]),
    "unknown-status": snapshot(["example.com\tfiled\n"]),
    "no-status": snapshot(["example.com\n"]),
    "five-fields": snapshot(["a.com\tconnected\tx\t2026-12-31T00:00:00Z\te\n"]),
    "empty-filing-number-with-expiry": snapshot(
        ["example.com\tconnected\t\t2026-12-31T00:00:00+08:00\n"]
    ),
    "expiry-not-rfc3339": snapshot(["example.com\tconnected\tX\tnot-a-time\n"]),
    "filing-number-control": snapshot(["example.com\tconnected\t京ICP\x01备\n"]),
    "filing-number-c1-control": snapshot(["example.com\tconnected\t京ICP\u0085备\n"]),
    "bad-name": snapshot(["bad name.com\tconnected\n"]),
    "name-127-1": snapshot(["127.1\tconnected\n"]),
    "invalid-utf8-record": snapshot(["example.com\tconnected\n"]).replace(b"example", b"ex\xffmple"),
    "nested-subdomains": snapshot(
        [
            "a.b.c.d.e.f.g.h.i.j.example.com\tdenied\n",
            "e.f.g.h.i.j.example.com\trevoked\n",
            "example.com\tconnected\t\t2027-01-15T08:00:00Z\n",
            "j.example.com\taccess_cancelled\n",
        ]
    ),
    "line-too-long": snapshot(["a" * 9000 + ".com\tconnected\n"]),
    # Findings of the fuzzer, minimized by hand (docs/fuzzing.md, "Findings").
    # 1. RFC 3339 fields take any ASCII byte between date and time (time 0.3's parser), so a
    #    control byte gets into an accepted snapshot: a carriage return in an expires-at, an
    #    escape in generated_at (kept as written and printed by `registry verify`).
    "finding-1-expires-at-cr-separator": snapshot(
        ["example.com\tconnected\t\t2026-12-31\r00:00:00Z\n"]
    ),
    "finding-1-generated-at-esc-separator": snapshot(
        ["example.com\tconnected\n"],
        header="icp-gate-registry 1 serial=1 generated_at=2026-11-22\x1b03:00:00Z\n",
    ),
}


# --- snapshot_records -------------------------------------------------------------------------
# Bytes decoded by `decode_records` in registry-sync/tests/fuzz_checks/mod.rs: flags, serial,
# then per record a name byte (+ one byte per piece) and a record byte.

def rec(name_byte, pieces, record_byte):
    return bytes([name_byte, *pieces, record_byte])


RECORDS = {
    # example.com connected, bad.example.com denied, 例子.中国 unconnected, 203.0.113.7 connected
    "mixed": bytes([0, 42])
    + rec(0x01, [0, 1], 0x00)
    + rec(0x02, [5, 0, 1], 0x04)
    + rec(0x01, [7, 6], 0x01)
    + rec(0x80, [], 0x00),
    "mixed-gzip": bytes([1, 43])
    + rec(0x01, [0, 1], 0x00)
    + rec(0x02, [5, 0, 1], 0x04)
    + rec(0x80, [], 0x00),
    # Unicode and A-label forms of one name: refused as a duplicate.
    "duplicate-unicode-alabel": bytes([0, 1]) + rec(0x01, [7, 6], 0x00) + rec(0x01, [9, 8], 0x03),
    # 203.0.113.7 and ::ffff:203.0.113.7: the same address.
    "duplicate-ip": bytes([0, 1]) + rec(0x80, [], 0x00) + rec(0x81, [], 0x04),
    # com.cn on its own: a public suffix.
    "public-suffix": bytes([0, 1]) + rec(0x00, [17], 0x00),
    # bad name.com: invalid.
    "invalid-name": bytes([0, 1]) + rec(0x01, [22, 1], 0x00),
    # Expiry edges on connected records: past, future, exactly now, one second before, now +08:00.
    "expiry-edges": bytes([0, 7])
    + rec(0x01, [0, 1], 0x20)
    + rec(0x01, [0, 2], 0x40)
    + rec(0x01, [4, 1], 0x60)
    + rec(0x01, [3, 2], 0x80)
    + rec(0x01, [5, 1], 0xA0),
    # Parent and child with different statuses, upper case and trailing dots.
    "parent-child": bytes([0, 9])
    + rec(0x0D, [0, 1], 0x03)
    + rec(0x06, [3, 0, 1], 0x00)
    + rec(0x03, [4, 3, 0, 1], 0x02),
    "empty": b"",
}


for name, data in HOSTS.items():
    put("host", name, data)
for name, data in SNAPSHOTS.items():
    put("snapshot", name, data)
for name, data in RECORDS.items():
    put("snapshot_records", name, data)
