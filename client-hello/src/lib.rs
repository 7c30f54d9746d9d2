//! TEMPORARY STUB (not committed): replaced by the helper's crate.
use std::borrow::Cow;
pub const MAX_CLIENT_HELLO_BYTES: usize = 16 * 1024;
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HelloError {
    NotTls,
    TooLarge,
    Malformed(&'static str),
}
impl HelloError {
    pub fn reason(self) -> &'static str {
        match self {
            HelloError::NotTls => "not_tls",
            HelloError::TooLarge => "client_hello_too_large",
            HelloError::Malformed(_) => "client_hello_malformed",
        }
    }
}
pub enum Progress {
    NeedMore,
    Complete { wire_len: usize, records: usize },
}
#[derive(Default)]
pub struct Scanner;
impl Scanner {
    pub fn new() -> Self {
        Scanner
    }
    pub fn scan(&mut self, buf: &[u8]) -> Result<Progress, HelloError> {
        if !buf.is_empty() && buf[0] != 22 {
            return Err(HelloError::NotTls);
        }
        if buf.len() > MAX_CLIENT_HELLO_BYTES {
            return Err(HelloError::TooLarge);
        }
        if buf.len() < 5 {
            return Ok(Progress::NeedMore);
        }
        let len = u16::from_be_bytes([buf[3], buf[4]]) as usize;
        if buf.len() < 5 + len {
            return Ok(Progress::NeedMore);
        }
        Ok(Progress::Complete {
            wire_len: 5 + len,
            records: 1,
        })
    }
}
pub fn handshake_message(buf: &[u8], wire_len: usize) -> Cow<'_, [u8]> {
    Cow::Borrowed(&buf[5..wire_len])
}
pub struct ClientHello<'a> {
    pub legacy_version: u16,
    pub sni: Option<&'a [u8]>,
    pub has_ech: bool,
    alpn: Vec<&'a [u8]>,
}
impl<'a> ClientHello<'a> {
    pub fn alpn(&self) -> impl Iterator<Item = &'a [u8]> + '_ {
        self.alpn.iter().copied()
    }
}
pub fn parse(msg: &[u8]) -> Result<ClientHello<'_>, HelloError> {
    let m = HelloError::Malformed("x");
    let b = msg.get(4..).ok_or(m)?;
    let mut p = 2 + 32;
    let sid = *b.get(p).ok_or(m)? as usize;
    p += 1 + sid;
    let cs = u16::from_be_bytes([*b.get(p).ok_or(m)?, *b.get(p + 1).ok_or(m)?]) as usize;
    p += 2 + cs;
    let cm = *b.get(p).ok_or(m)? as usize;
    p += 1 + cm;
    let mut h = ClientHello {
        legacy_version: 0x0303,
        sni: None,
        has_ech: false,
        alpn: vec![],
    };
    if p >= b.len() {
        return Ok(h);
    }
    let el = u16::from_be_bytes([b[p], *b.get(p + 1).ok_or(m)?]) as usize;
    p += 2;
    let end = p + el;
    if end > b.len() {
        return Err(m);
    }
    while p + 4 <= end {
        let t = u16::from_be_bytes([b[p], b[p + 1]]);
        let l = u16::from_be_bytes([b[p + 2], b[p + 3]]) as usize;
        p += 4;
        let d = b.get(p..p + l).ok_or(m)?;
        p += l;
        if t == 0 && d.len() >= 5 {
            let nl = u16::from_be_bytes([d[3], d[4]]) as usize;
            h.sni = d.get(5..5 + nl);
        }
        if t == 16 && d.len() >= 2 {
            let mut q = 2;
            while q < d.len() {
                let n = d[q] as usize;
                if let Some(x) = d.get(q + 1..q + 1 + n) {
                    h.alpn.push(x)
                }
                q += 1 + n;
            }
        }
        if t == 0xfe0d {
            h.has_ech = true;
        }
    }
    Ok(h)
}
