//! Certificate files for TLS termination (`[tls] certificates = "DIR"`): `NAME.crt`, a PEM chain
//! with the end-entity certificate first, and `NAME.key`, its PEM private key (PKCS #8, PKCS #1
//! RSA or SEC1 EC). Reading and checking only: `icp-gate -t` reports what this finds, and the
//! proxy's certificate store serves what it loads.
//!
//! A pair is loaded when both files read and parse, the key is one rustls can sign with (ring:
//! ECDSA P-256/P-384, RSA 2048+, Ed25519), the key matches the end-entity certificate, the
//! certificate has not expired and it names at least one usable DNS name in its subjectAltName.
//! The chain itself is not verified against any root: what clients trust is the operator's
//! business.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

/// A certificate or key file larger than this is refused unread (a chain is a few KiB).
pub const MAX_FILE_BYTES: u64 = 1 << 20;

/// Why a file was not loaded: the `reason` label of `icp_gate_tls_certificates_rejected_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rejection {
    /// The file could not be read (permissions, vanished, a directory, over 1 MiB).
    Unreadable,
    /// Not PEM, no certificate (or key) in it, or a certificate that is not valid DER X.509.
    Unparseable,
    /// A private key of a type or size the gate cannot sign with.
    UnsupportedKey,
    /// The key is not the one the end-entity certificate certifies.
    KeyMismatch,
    /// The end-entity certificate's notAfter is in the past.
    Expired,
    /// No usable DNS name in the certificate's subjectAltName: it would serve nothing.
    NoNames,
    /// `NAME.crt` without `NAME.key`, or the other way round.
    MissingPair,
}

impl Rejection {
    pub const ALL: [Rejection; 7] = [
        Rejection::Unreadable,
        Rejection::Unparseable,
        Rejection::UnsupportedKey,
        Rejection::KeyMismatch,
        Rejection::Expired,
        Rejection::NoNames,
        Rejection::MissingPair,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::Unreadable => "unreadable",
            Rejection::Unparseable => "unparseable",
            Rejection::UnsupportedKey => "unsupported_key",
            Rejection::KeyMismatch => "key_mismatch",
            Rejection::Expired => "expired",
            Rejection::NoNames => "no_names",
            Rejection::MissingPair => "missing_pair",
        }
    }
}

/// One file that was not loaded, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileProblem {
    /// The file the problem is in (`NAME.crt` or `NAME.key`), without the directory.
    pub file: String,
    pub reason: Rejection,
    pub detail: String,
}

impl fmt::Display for FileProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}`: {}", self.file, self.detail)
    }
}

/// A pair that loaded.
#[derive(Clone, Debug)]
pub struct CertPair {
    /// `NAME.crt`: the label of the certificate's expiry metric and log lines.
    pub file: String,
    pub certified_key: Arc<CertifiedKey>,
    /// The names served: lower-case A-labels without a trailing dot, wildcards as
    /// `*.example.com`; exact names first, then wildcards, each sorted, no duplicates.
    pub names: Vec<String>,
    /// subjectAltName DNS entries that serve nothing (an IP written as a DNS name, a partial
    /// wildcard such as `w*.example.com`, `*.com`, a malformed name), as written.
    pub ignored_names: Vec<String>,
    /// The end-entity certificate's notAfter, unix seconds.
    pub not_after: i64,
}

/// What a directory holds: the pairs that loaded and every file that did not.
#[derive(Debug, Default)]
pub struct DirLoad {
    pub pairs: Vec<CertPair>,
    pub problems: Vec<FileProblem>,
}

/// Unix time now, in seconds.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// `NAME` of every `NAME.crt` / `NAME.key` in `dir`, with which of the two exist. Hidden files
/// (a leading dot, e.g. Kubernetes' `..data`), other extensions, names that are not UTF-8 and
/// anything that is not a file (after symlinks) are left out.
pub fn list_dir(dir: &Path) -> std::io::Result<BTreeMap<String, (bool, bool)>> {
    let mut out: BTreeMap<String, (bool, bool)> = BTreeMap::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if name.starts_with('.') {
            continue;
        }
        let (stem, is_crt) = if let Some(stem) = name.strip_suffix(".crt") {
            (stem, true)
        } else if let Some(stem) = name.strip_suffix(".key") {
            (stem, false)
        } else {
            continue;
        };
        // Follows a symlink; one that dangles is still listed (and fails to read).
        let is_file = std::fs::metadata(entry.path())
            .map(|m| m.is_file())
            .unwrap_or(true);
        if !is_file {
            continue;
        }
        let slot = out.entry(stem.to_owned()).or_default();
        if is_crt {
            slot.0 = true;
        } else {
            slot.1 = true;
        }
    }
    Ok(out)
}

/// Reads every pair in `dir`; an error only when the directory itself cannot be read.
pub fn load_dir(dir: &Path, now: i64) -> std::io::Result<DirLoad> {
    let mut load = DirLoad::default();
    for (stem, present) in list_dir(dir)? {
        match present {
            (true, true) => match load_pair(dir, &stem, now) {
                Ok(pair) => load.pairs.push(pair),
                Err(p) => load.problems.push(p),
            },
            (true, false) => load.problems.push(FileProblem {
                file: format!("{stem}.crt"),
                reason: Rejection::MissingPair,
                detail: format!("no `{stem}.key` beside it"),
            }),
            (false, _) => load.problems.push(FileProblem {
                file: format!("{stem}.key"),
                reason: Rejection::MissingPair,
                detail: format!("no `{stem}.crt` beside it"),
            }),
        }
    }
    Ok(load)
}

fn read_capped(dir: &Path, file: &str) -> Result<Vec<u8>, FileProblem> {
    use std::io::Read;
    let unreadable = |detail: String| FileProblem {
        file: file.to_owned(),
        reason: Rejection::Unreadable,
        detail,
    };
    let f =
        std::fs::File::open(dir.join(file)).map_err(|e| unreadable(format!("cannot read: {e}")))?;
    let mut bytes = Vec::new();
    f.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| unreadable(format!("cannot read: {e}")))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(unreadable(format!(
            "larger than {MAX_FILE_BYTES} bytes: not a certificate file"
        )));
    }
    Ok(bytes)
}

/// Reads and checks `NAME.crt` and `NAME.key` in `dir`. A problem names the file it is in.
pub fn load_pair(dir: &Path, stem: &str, now: i64) -> Result<CertPair, FileProblem> {
    let crt_file = format!("{stem}.crt");
    let key_file = format!("{stem}.key");
    let problem = |file: &str, reason: Rejection, detail: String| FileProblem {
        file: file.to_owned(),
        reason,
        detail,
    };

    let crt_pem = read_capped(dir, &crt_file)?;
    let chain = CertificateDer::pem_slice_iter(&crt_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            problem(
                &crt_file,
                Rejection::Unparseable,
                format!("not a PEM certificate chain: {e}"),
            )
        })?;
    if chain.is_empty() {
        return Err(problem(
            &crt_file,
            Rejection::Unparseable,
            "no CERTIFICATE in the file".into(),
        ));
    }
    for (i, der) in chain.iter().enumerate().skip(1) {
        if let Err(e) = x509_parser::parse_x509_certificate(der) {
            return Err(problem(
                &crt_file,
                Rejection::Unparseable,
                format!("certificate {} of the chain is not X.509: {e}", i + 1),
            ));
        }
    }
    let (names, ignored_names, not_after) = {
        let (_, leaf) = x509_parser::parse_x509_certificate(&chain[0]).map_err(|e| {
            problem(
                &crt_file,
                Rejection::Unparseable,
                format!("the first certificate is not X.509: {e}"),
            )
        })?;
        let not_after = leaf.validity().not_after.timestamp();
        let san = leaf.subject_alternative_name().map_err(|e| {
            problem(
                &crt_file,
                Rejection::Unparseable,
                format!("its subjectAltName does not parse: {e}"),
            )
        })?;
        let dns = san
            .map(|san| {
                san.value
                    .general_names
                    .iter()
                    .filter_map(|n| match n {
                        x509_parser::extensions::GeneralName::DNSName(d) => Some(*d),
                        _ => None,
                    })
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        let (names, ignored) = served_names(&dns);
        (names, ignored, not_after)
    };
    if not_after < now {
        return Err(problem(
            &crt_file,
            Rejection::Expired,
            format!("expired at {}", rfc3339(not_after)),
        ));
    }
    if names.is_empty() {
        return Err(problem(
            &crt_file,
            Rejection::NoNames,
            if ignored_names.is_empty() {
                "no DNS name in its subjectAltName: it would serve no name".into()
            } else {
                format!(
                    "no usable DNS name in its subjectAltName (ignored: {}): it would serve no name",
                    ignored_names.join(", ")
                )
            },
        ));
    }

    let key_pem = read_capped(dir, &key_file)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        problem(
            &key_file,
            Rejection::Unparseable,
            format!("not a PEM private key: {e}"),
        )
    })?;
    let signing_key = rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| {
        problem(
            &key_file,
            Rejection::UnsupportedKey,
            format!("a key the gate cannot sign with (ECDSA P-256 or P-384, RSA 2048 bits or more, Ed25519): {e}"),
        )
    })?;
    let certified_key = CertifiedKey::new(chain, signing_key);
    match certified_key.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(rustls::Error::InconsistentKeys(_)) => {
            return Err(problem(
                &key_file,
                Rejection::KeyMismatch,
                format!("not the key `{crt_file}` certifies"),
            ))
        }
        Err(e) => {
            return Err(problem(
                &crt_file,
                Rejection::Unparseable,
                format!("the first certificate does not parse: {e}"),
            ))
        }
    }
    Ok(CertPair {
        file: crt_file,
        certified_key: Arc::new(certified_key),
        names,
        ignored_names,
        not_after,
    })
}

/// The names a certificate's subjectAltName DNS entries serve (normalized as an SNI is; exact
/// names first, then wildcards) and the entries that serve nothing. A wildcard is `*` as the
/// whole leftmost label over at least two labels (RFC 6125 §6.4.3; `*.com` is refused as
/// clients refuse it).
pub fn served_names(dns: &[&str]) -> (Vec<String>, Vec<String>) {
    let mut exact = Vec::new();
    let mut wild = Vec::new();
    let mut ignored = Vec::new();
    for &raw in dns {
        let (is_wild, rest) = match raw.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, raw),
        };
        let normal = match icp_gate_registry::parse_sni(rest.as_bytes()) {
            Ok(Some(d)) if !rest.contains('*') => Some(d.as_str().to_owned()),
            _ => None,
        };
        match normal {
            Some(n) if is_wild && n.contains('.') => wild.push(format!("*.{n}")),
            Some(n) if !is_wild => exact.push(n),
            _ => ignored.push(raw.to_owned()),
        }
    }
    exact.sort();
    exact.dedup();
    wild.sort();
    wild.dedup();
    exact.extend(wild);
    (exact, ignored)
}

/// Whether `pattern` (a served name) covers the normalized `host`: equal, or a wildcard whose
/// `*` stands for exactly the host's first label.
pub fn name_covers(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(parent) => match host.split_once('.') {
            Some((first, rest)) => !first.is_empty() && rest == parent,
            None => false,
        },
        None => pattern == host,
    }
}

/// Unix seconds as RFC 3339, for messages.
pub fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("unix time {unix}"))
}

/// Certificates made at test time, for this crate's tests and the proxy's.
#[cfg(test)]
pub(crate) mod testing {
    use std::path::Path;

    /// Writes `NAME.crt` and `NAME.key`: a self-signed ECDSA P-256 certificate for `names`,
    /// expiring at `not_after` (year, month, day).
    pub fn write_pair(dir: &Path, stem: &str, names: &[&str], not_after: (i32, u8, u8)) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(dir.join(format!("{stem}.crt")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{stem}.key")), key.serialize_pem()).unwrap();
    }
}

#[cfg(test)]
mod tests {
    use super::testing::write_pair;
    use super::*;

    #[test]
    fn names_normalized_exact_first_and_bad_ones_ignored() {
        let (names, ignored) = served_names(&[
            "*.Example.com",
            "WWW.example.com.",
            "example.com",
            "www.example.com",
            "*.com",
            "w*.example.com",
            "a.*.example.com",
            "192.0.2.1",
            "*",
        ]);
        assert_eq!(names, ["example.com", "www.example.com", "*.example.com"]);
        assert_eq!(
            ignored,
            [
                "*.com",
                "w*.example.com",
                "a.*.example.com",
                "192.0.2.1",
                "*"
            ]
        );
    }

    #[test]
    fn wildcards_cover_exactly_one_label() {
        assert!(name_covers("*.example.com", "www.example.com"));
        assert!(!name_covers("*.example.com", "example.com"));
        assert!(!name_covers("*.example.com", "a.b.example.com"));
        assert!(!name_covers("*.example.com", "wwwexample.com"));
        assert!(name_covers("example.com", "example.com"));
        assert!(!name_covers("example.com", "www.example.com"));
    }

    #[test]
    fn a_good_pair_loads_and_each_bad_file_is_named_with_its_reason() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write_pair(d, "good", &["example.com", "*.example.com"], (2099, 1, 1));
        write_pair(d, "old", &["old.example.com"], (2021, 1, 1));
        write_pair(d, "a", &["a.example.com"], (2099, 1, 1));
        write_pair(d, "b", &["b.example.com"], (2099, 1, 1));
        // a.key is b's key now.
        std::fs::copy(d.join("b.key"), d.join("a.key")).unwrap();
        write_pair(d, "lonely", &["lonely.example.com"], (2099, 1, 1));
        std::fs::remove_file(d.join("lonely.key")).unwrap();
        std::fs::write(d.join("orphan.key"), "x").unwrap();
        std::fs::write(d.join("garbage.crt"), "-----BEGIN CERTIFICATE-----\n!!!\n").unwrap();
        std::fs::write(d.join("garbage.key"), "nothing").unwrap();
        std::fs::write(d.join("README"), "ignored").unwrap();
        write_pair(d, "ip", &["192.0.2.1"], (2099, 1, 1));

        let load = load_dir(d, unix_now()).unwrap();
        let loaded: Vec<&str> = load.pairs.iter().map(|p| p.file.as_str()).collect();
        assert_eq!(loaded, ["b.crt", "good.crt"]);
        assert_eq!(load.pairs[1].names, ["example.com", "*.example.com"]);
        assert!(load.pairs[1].not_after > unix_now());
        let problems: Vec<(&str, Rejection)> = load
            .problems
            .iter()
            .map(|p| (p.file.as_str(), p.reason))
            .collect();
        assert_eq!(
            problems,
            [
                ("a.key", Rejection::KeyMismatch),
                ("garbage.crt", Rejection::Unparseable),
                ("ip.crt", Rejection::NoNames),
                ("lonely.crt", Rejection::MissingPair),
                ("old.crt", Rejection::Expired),
                ("orphan.key", Rejection::MissingPair),
            ],
            "{:#?}",
            load.problems
        );
        assert_eq!(
            load.problems[4].to_string(),
            "`old.crt`: expired at 2021-01-01T00:00:00Z"
        );
    }

    #[test]
    fn rsa_keys_load_and_unsupported_ones_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let openssl = |args: &[&str]| {
            std::process::Command::new("openssl")
                .args(args)
                .current_dir(d)
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false)
        };
        if !openssl(&["version"]) {
            eprintln!("skipped: no openssl to make an RSA key with (rcgen on ring cannot)");
            return;
        }
        // RSA in PKCS #8, and the same key in PKCS #1 ("RSA PRIVATE KEY") as older tools write it.
        assert!(openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "rsa.key",
            "-out",
            "rsa.crt",
            "-days",
            "30",
            "-subj",
            "/CN=rsa.example.com",
            "-addext",
            "subjectAltName=DNS:rsa.example.com",
        ]));
        assert!(openssl(&[
            "rsa",
            "-in",
            "rsa.key",
            "-traditional",
            "-out",
            "rsa1.key"
        ]));
        std::fs::copy(d.join("rsa.crt"), d.join("rsa1.crt")).unwrap();
        let pkcs1 = std::fs::read_to_string(d.join("rsa1.key")).unwrap();
        assert!(
            pkcs1.starts_with("-----BEGIN RSA PRIVATE KEY-----"),
            "{pkcs1}"
        );
        // ECDSA P-521: ring cannot sign with it.
        assert!(openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-521",
            "-nodes",
            "-keyout",
            "p521.key",
            "-out",
            "p521.crt",
            "-days",
            "30",
            "-subj",
            "/CN=x",
            "-addext",
            "subjectAltName=DNS:p521.example.com",
        ]));
        let load = load_dir(d, unix_now()).unwrap();
        assert_eq!(load.pairs.len(), 2, "{:#?}", load.problems);
        assert_eq!(load.pairs[0].names, ["rsa.example.com"]);
        assert_eq!(load.pairs[1].file, "rsa1.crt");
        assert_eq!(load.problems.len(), 1);
        assert_eq!(load.problems[0].file, "p521.key");
        assert_eq!(load.problems[0].reason, Rejection::UnsupportedKey);
    }
}
