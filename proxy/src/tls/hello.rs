//! Stage 1 of a TLS connection: its ClientHello, read before anything else, reassembled across
//! TCP segments and TLS records (`icp-gate-client-hello` does the framing), within a deadline
//! and at most `MAX_CLIENT_HELLO_BYTES` held per connection.

use std::borrow::Cow;
use std::time::Instant;

use icp_gate_client_hello::{
    handshake_message, parse, ClientHello, HelloError, Progress, Scanner, MAX_CLIENT_HELLO_BYTES,
};
use pingora::protocols::Stream;
use tokio::io::AsyncReadExt;

/// Why no ClientHello could be read: each is a refusal with its own reason, except a client
/// that went away, which nobody is left to refuse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HelloFailure {
    NotTls,
    TooLarge,
    Malformed(&'static str),
    Timeout,
    /// The client closed (or the connection failed) before its hello was complete.
    Closed,
}

impl HelloFailure {
    /// The refusals, in the order of `index()`: the `reason` label values.
    pub const REASONS: [&'static str; 4] = [
        "not_tls",
        "client_hello_too_large",
        "client_hello_malformed",
        "client_hello_timeout",
    ];

    /// Index into `REASONS`; None for `Closed`, which is not a refusal.
    pub fn index(self) -> Option<usize> {
        match self {
            HelloFailure::NotTls => Some(0),
            HelloFailure::TooLarge => Some(1),
            HelloFailure::Malformed(_) => Some(2),
            HelloFailure::Timeout => Some(3),
            HelloFailure::Closed => None,
        }
    }

    pub fn reason(self) -> &'static str {
        self.index().map_or("client_closed", |i| Self::REASONS[i])
    }

    pub fn detail(self) -> &'static str {
        match self {
            HelloFailure::Malformed(what) => what,
            _ => "",
        }
    }
}

impl From<HelloError> for HelloFailure {
    fn from(e: HelloError) -> Self {
        match e {
            HelloError::NotTls => HelloFailure::NotTls,
            HelloError::TooLarge => HelloFailure::TooLarge,
            HelloError::Malformed(what) => HelloFailure::Malformed(what),
        }
    }
}

/// A complete ClientHello and every byte read with it, unchanged: what passthrough writes to
/// the origin first.
pub struct Hello {
    /// Every byte read from the client so far (the hello's records, and anything the client
    /// sent right behind them in the same reads).
    pub bytes: Vec<u8>,
    /// How many of `bytes` carry the hello, and in how many records.
    pub wire_len: usize,
    pub records: usize,
}

impl Hello {
    /// The hello's handshake message, borrowed when it sat in one record.
    pub fn message(&self) -> Cow<'_, [u8]> {
        handshake_message(&self.bytes, self.wire_len)
    }
}

/// Parses a reassembled handshake message (kept apart from `Hello` so the message can be
/// borrowed from it).
pub fn walk(message: &[u8]) -> Result<ClientHello<'_>, HelloFailure> {
    parse(message).map_err(HelloFailure::from)
}

/// The bytes a hello's first read asks for: a classic hello (517 B) and a post-quantum one
/// (about 1.8 KiB) fit; a larger one grows the buffer up to the cap.
const FIRST_READ: usize = 2048;

/// Reads the connection's ClientHello, until `deadline`.
pub async fn read(stream: &mut Stream, deadline: Instant) -> Result<Hello, HelloFailure> {
    let mut bytes = Vec::with_capacity(FIRST_READ);
    let mut scanner = Scanner::new();
    loop {
        // One byte past the cap is enough to know a hello is too large.
        let room = MAX_CLIENT_HELLO_BYTES + 1 - bytes.len();
        if bytes.capacity() == bytes.len() {
            bytes.reserve_exact(room.min(bytes.len().max(FIRST_READ)));
        }
        let want = (bytes.capacity() - bytes.len()).min(room);
        let mut limited = (&mut *stream).take(want as u64);
        let read = limited.read_buf(&mut bytes);
        match tokio::time::timeout_at(deadline.into(), read).await {
            Err(_) => return Err(HelloFailure::Timeout),
            Ok(Ok(0)) | Ok(Err(_)) => return Err(HelloFailure::Closed),
            Ok(Ok(_)) => {}
        }
        match scanner.scan(&bytes)? {
            Progress::NeedMore => {}
            Progress::Complete { wire_len, records } => {
                return Ok(Hello {
                    bytes,
                    wire_len,
                    records,
                })
            }
        }
    }
}
