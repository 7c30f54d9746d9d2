//! `[admin]`: where the admin listener is, and how it is kept to the people meant to use it (a
//! bearer token, a Unix socket's mode, the host names it answers to).

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Where the admin listener listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AdminAddress {
    Tcp(SocketAddr),
    /// A Unix socket at this path (`unix:/run/icp-gate/admin.sock`).
    Unix(PathBuf),
}

impl AdminAddress {
    /// The TCP address, when it is one.
    pub fn tcp(&self) -> Option<SocketAddr> {
        match self {
            AdminAddress::Tcp(a) => Some(*a),
            AdminAddress::Unix(_) => None,
        }
    }
}

impl fmt::Display for AdminAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AdminAddress::Tcp(a) => write!(f, "{a}"),
            AdminAddress::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// Which admin endpoints need the token (when `token_file` is set).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequireToken {
    /// Those that change something: `POST /sync`.
    Mutating,
    /// Every endpoint but the probes, `/healthz` and `/readyz`.
    All,
}

/// `[admin]`, checked.
#[derive(Clone, Debug)]
pub struct AdminSettings {
    pub address: AdminAddress,
    /// Permission bits of a Unix socket (ignored for TCP).
    pub socket_mode: u32,
    /// The bearer token's file (read when checked; the gate reads it at start and on SIGHUP).
    pub token_file: Option<PathBuf>,
    pub require_token: RequireToken,
    /// Lower-case host names the listener answers to besides IP literals and `localhost`.
    pub allowed_hosts: Vec<String>,
    pub top_blocked_capacity: usize,
}

/// Default permission bits of a Unix admin socket: the owner and its group.
pub const DEFAULT_SOCKET_MODE: u32 = 0o660;
/// The shortest token accepted.
pub const MIN_TOKEN_LEN: usize = 16;
/// The longest Unix socket path (`sun_path` holds 108 bytes with its NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// Reads a bearer token file: one token, surrounding whitespace (a final newline) ignored, of
/// at least `MIN_TOKEN_LEN` characters allowed in a bearer token (RFC 6750 `b64token`). The
/// error says what is wrong, without the token.
pub fn read_token(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
    let token = text.trim();
    if token.len() < MIN_TOKEN_LEN {
        return Err(format!(
            "`{}` must hold a token of at least {MIN_TOKEN_LEN} characters (it holds {}); \
             e.g. `openssl rand -hex 32 > {}`",
            path.display(),
            token.len(),
            path.display()
        ));
    }
    let b64token = |c: char| c.is_ascii_alphanumeric() || "-._~+/".contains(c);
    let body = token.trim_end_matches('=');
    if body.is_empty() || !body.chars().all(b64token) {
        return Err(format!(
            "`{}` must hold one token of letters, digits and -._~+/ (then optional =), on one line",
            path.display()
        ));
    }
    Ok(token.to_owned())
}

/// `unix:PATH` as a Unix socket address: absolute, short enough, in a directory that exists.
pub fn parse_unix(value: &str) -> Option<Result<PathBuf, String>> {
    let path = value.strip_prefix("unix:")?;
    let path = PathBuf::from(path);
    Some(if !path.is_absolute() {
        Err(format!("`{value}`: the socket path must be absolute"))
    } else if path.as_os_str().len() > MAX_SOCKET_PATH {
        Err(format!(
            "`{value}`: a Unix socket path may have at most {MAX_SOCKET_PATH} bytes"
        ))
    } else if path.file_name().is_none() {
        Err(format!("`{value}`: name the socket file"))
    } else {
        match path.parent().map(std::fs::metadata) {
            Some(Ok(m)) if m.is_dir() => Ok(path),
            _ => Err(format!(
                "`{value}`: the directory `{}` does not exist",
                path.parent().unwrap_or(Path::new("/")).display()
            )),
        }
    })
}

/// `"0660"` (octal digits, at most 0777) as permission bits.
pub fn parse_socket_mode(value: &str) -> Result<u32, String> {
    match u32::from_str_radix(value, 8) {
        Ok(mode) if !value.is_empty() && mode <= 0o777 => Ok(mode),
        _ => Err(format!(
            "`{value}` is not a permission mode: octal digits up to 0777, as a string (e.g. \"0660\")"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        let read = |text: &str| {
            std::fs::write(&file, text).unwrap();
            read_token(&file)
        };
        assert_eq!(
            read("0123456789abcdef0123\n").unwrap(),
            "0123456789abcdef0123"
        );
        assert_eq!(
            read("  A-b.c_d~e+f/g0123==\r\n").unwrap(),
            "A-b.c_d~e+f/g0123=="
        );
        assert!(read("short\n").unwrap_err().contains("at least 16"));
        assert!(read("").unwrap_err().contains("(it holds 0)"));
        assert!(read("0123456789abcdef 0123456789abcdef")
            .unwrap_err()
            .contains("one token"));
        assert!(read("0123456789abcdef\n0123456789abcdef")
            .unwrap_err()
            .contains("one line"));
        assert!(read_token(&dir.path().join("missing"))
            .unwrap_err()
            .contains("cannot read"));
    }

    #[test]
    fn unix_addresses_and_modes() {
        let dir = tempfile::tempdir().unwrap();
        let ok = format!("unix:{}/admin.sock", dir.path().display());
        assert_eq!(
            parse_unix(&ok).unwrap().unwrap(),
            dir.path().join("admin.sock")
        );
        assert!(parse_unix("127.0.0.1:9090").is_none());
        assert!(parse_unix("unix:admin.sock")
            .unwrap()
            .unwrap_err()
            .contains("absolute"));
        assert!(parse_unix("unix:/no/such/dir/admin.sock")
            .unwrap()
            .unwrap_err()
            .contains("does not exist"));
        let long = format!("unix:/{}", "a".repeat(120));
        assert!(parse_unix(&long).unwrap().unwrap_err().contains("at most"));
        assert_eq!(parse_socket_mode("0660"), Ok(0o660));
        assert_eq!(parse_socket_mode("600"), Ok(0o600));
        assert!(parse_socket_mode("0800").is_err());
        assert!(parse_socket_mode("1777").is_err());
        assert!(parse_socket_mode("").is_err());
        assert!(parse_socket_mode("rw").is_err());
    }
}
