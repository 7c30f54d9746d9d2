//! Follows a chunked response body (RFC 9112 §7.1) as its bytes are relayed unchanged, to know
//! where it ends: the upstream connection can be reused only after exactly the whole body.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Hex digits of a chunk size; `digits` read so far.
    Size {
        digits: u8,
    },
    /// After the size: optional whitespace, then `;` (extensions) or CR.
    SizeWs,
    /// After a `;`: chunk extensions (visible ASCII, spaces, tabs) up to CR.
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    /// At the start of a trailer line, or of the final empty line.
    TrailerStart,
    TrailerLine,
    TrailerLf,
    FinalLf,
    Done,
}

/// A body whose framing is broken: the relay stops and neither connection is reused.
#[derive(Debug, PartialEq, Eq)]
pub struct FramingError;

#[derive(Debug)]
pub struct ChunkedTracker {
    state: State,
    /// Bytes left in the current chunk (while in `Data`), or the size being read.
    size: u64,
}

impl Default for ChunkedTracker {
    fn default() -> Self {
        ChunkedTracker {
            state: State::Size { digits: 0 },
            size: 0,
        }
    }
}

impl ChunkedTracker {
    pub fn done(&self) -> bool {
        self.state == State::Done
    }

    /// Follows `bytes`; returns how many of them belong to the body (fewer than all only when
    /// the body ended inside them).
    pub fn feed(&mut self, bytes: &[u8]) -> Result<usize, FramingError> {
        let mut i = 0;
        while i < bytes.len() {
            if self.state == State::Data {
                let take = (bytes.len() - i).min(self.size.min(usize::MAX as u64) as usize);
                self.size -= take as u64;
                i += take;
                if self.size == 0 {
                    self.state = State::DataCr;
                }
                continue;
            }
            let b = bytes[i];
            self.state = match self.state {
                State::Done => return Ok(i),
                State::Data => unreachable!("handled above"),
                State::Size { digits } => match hex(b) {
                    Some(v) if digits < 16 => {
                        self.size = self.size << 4 | u64::from(v);
                        State::Size { digits: digits + 1 }
                    }
                    None if digits > 0 && b == b';' => State::Extension,
                    None if digits > 0 && matches!(b, b' ' | b'\t') => State::SizeWs,
                    None if digits > 0 && b == b'\r' => State::SizeLf,
                    _ => return Err(FramingError),
                },
                // RFC 9112 §7.1.1: `chunk-size [ chunk-ext ] CRLF`, `chunk-ext` being
                // `*( BWS ";" BWS ext-name [ BWS "=" BWS ext-val ] )`. Anything else after the
                // size (`5 junk`, bytes above 0x7e) is a size line two readers could take
                // apart differently: refused.
                State::SizeWs => match b {
                    b' ' | b'\t' => State::SizeWs,
                    b';' => State::Extension,
                    b'\r' => State::SizeLf,
                    _ => return Err(FramingError),
                },
                State::Extension => match b {
                    b'\r' => State::SizeLf,
                    b'\t' | 0x20..=0x7e => State::Extension,
                    _ => return Err(FramingError),
                },
                State::SizeLf => match b {
                    b'\n' if self.size == 0 => State::TrailerStart,
                    b'\n' => State::Data,
                    _ => return Err(FramingError),
                },
                State::DataCr => match b {
                    b'\r' => State::DataLf,
                    _ => return Err(FramingError),
                },
                State::DataLf => match b {
                    b'\n' => {
                        self.size = 0;
                        State::Size { digits: 0 }
                    }
                    _ => return Err(FramingError),
                },
                State::TrailerStart => match b {
                    b'\r' => State::FinalLf,
                    b'\n' => return Err(FramingError),
                    _ => State::TrailerLine,
                },
                State::TrailerLine => match b {
                    b'\r' => State::TrailerLf,
                    b'\n' => return Err(FramingError),
                    _ => State::TrailerLine,
                },
                State::TrailerLf | State::FinalLf => match b {
                    b'\n' if self.state == State::FinalLf => {
                        self.state = State::Done;
                        return Ok(i + 1);
                    }
                    b'\n' => State::TrailerStart,
                    _ => return Err(FramingError),
                },
            };
            i += 1;
        }
        Ok(i)
    }
}

impl ChunkedTracker {
    /// `feed`, appending to `out` every byte that belongs to the body except the trailer
    /// section's fields (the chunks and the final empty line pass): trailers are not forwarded,
    /// on either forwarding path (Pingora 0.9 cannot write HTTP/1 trailers).
    pub fn feed_without_trailers(
        &mut self,
        bytes: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<usize, FramingError> {
        let mut i = 0;
        while i < bytes.len() && !self.done() {
            let len = if self.state == State::Data {
                (bytes.len() - i).min(self.size.min(usize::MAX as u64) as usize)
            } else {
                1
            };
            let trailer = matches!(self.state, State::TrailerLine | State::TrailerLf)
                || (self.state == State::TrailerStart && bytes[i] != b'\r');
            let n = self.feed(&bytes[i..i + len])?;
            if !trailer {
                out.extend_from_slice(&bytes[i..i + n]);
            }
            i += n;
            if n < len {
                break;
            }
        }
        Ok(i)
    }
}

impl ChunkedTracker {
    /// `feed`, appending to `out` only the chunks' data (the body decoded, as HTTP/2 carries
    /// it in DATA frames); sizes, extensions and trailers are dropped.
    pub fn feed_data(&mut self, bytes: &[u8], out: &mut Vec<u8>) -> Result<usize, FramingError> {
        let mut i = 0;
        while i < bytes.len() && !self.done() {
            let data = self.state == State::Data;
            let len = if data {
                (bytes.len() - i).min(self.size.min(usize::MAX as u64) as usize)
            } else {
                1
            };
            let n = self.feed(&bytes[i..i + len])?;
            if data {
                out.extend_from_slice(&bytes[i..i + n]);
            }
            i += n;
            if n < len {
                break;
            }
        }
        Ok(i)
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `body` in pieces of every size and checks the end is found at the same place.
    fn end_of(body: &[u8]) -> Result<usize, FramingError> {
        let mut whole = ChunkedTracker::default();
        let expected = whole.feed(body)?;
        assert!(whole.done() || expected == body.len());
        for step in 1..body.len().max(2) {
            let mut t = ChunkedTracker::default();
            let mut used = 0;
            for piece in body.chunks(step) {
                let n = t.feed(piece)?;
                used += n;
                if n < piece.len() {
                    break;
                }
            }
            assert_eq!(used, expected, "step {step}");
            assert_eq!(t.done(), whole.done(), "step {step}");
        }
        Ok(expected)
    }

    #[test]
    fn feed_data_decodes_the_body_in_pieces_of_any_size() {
        let body = b"5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nTrailer: x\r\n\r\nNEXT";
        for step in 1..body.len() {
            let mut t = ChunkedTracker::default();
            let (mut out, mut used) = (Vec::new(), 0);
            for piece in body.chunks(step) {
                let n = t.feed_data(piece, &mut out).unwrap();
                used += n;
                if n < piece.len() {
                    break;
                }
            }
            assert!(t.done(), "step {step}");
            assert_eq!(used, body.len() - 4, "step {step}");
            assert_eq!(out, b"hello, world", "step {step}");
        }
        let mut broken = Vec::new();
        assert_eq!(
            ChunkedTracker::default().feed_data(b"5\r\nhelloX", &mut broken),
            Err(FramingError)
        );
    }

    #[test]
    fn finds_the_end_of_a_body() {
        let body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n";
        assert_eq!(end_of(body), Ok(body.len()));
        let mut with_next = body.to_vec();
        with_next.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        assert_eq!(end_of(&with_next), Ok(body.len()));
        let trailers = b"A\r\n0123456789\r\n0\r\nX-Sum: 1\r\nX-More: 2\r\n\r\n";
        assert_eq!(end_of(trailers), Ok(trailers.len()));
    }

    #[test]
    fn an_unfinished_body_is_not_done() {
        let mut t = ChunkedTracker::default();
        assert_eq!(t.feed(b"5\r\nhel"), Ok(6));
        assert!(!t.done());
        assert_eq!(t.feed(b"lo\r\n0\r\n\r"), Ok(8));
        assert!(!t.done());
        assert_eq!(t.feed(b"\n"), Ok(1));
        assert!(t.done());
    }

    #[test]
    fn broken_framing_is_an_error() {
        for bad in [
            &b"\r\n"[..],
            b"zz\r\n",
            b"5\nhello",
            b"5\r\nhelloX\r\n",
            b"5\r\nhello\r\n0\r\n\n",
            b"11111111111111111\r\n",
            b"5;\x01\r\n",
        ] {
            assert_eq!(end_of(bad), Err(FramingError), "{}", bad.escape_ascii());
        }
    }

    #[test]
    fn trailers_are_dropped_and_the_rest_kept_whatever_the_reads() {
        let body = b"5\r\nhello\r\n3;x=1\r\nabc\r\n0\r\nX-Sum: 42\r\nX-B: 1\r\n\r\nNEXT";
        let want = b"5\r\nhello\r\n3;x=1\r\nabc\r\n0\r\n\r\n";
        for cut in 1..body.len() {
            let mut t = ChunkedTracker::default();
            let mut out = Vec::new();
            let a = t.feed_without_trailers(&body[..cut], &mut out).unwrap();
            let b = t.feed_without_trailers(&body[a..], &mut out).unwrap();
            assert!(t.done());
            assert_eq!(a + b, body.len() - 4, "cut at {cut}");
            assert_eq!(out, want, "cut at {cut}");
        }
    }

    #[test]
    fn size_lines_are_only_a_size_and_extensions() {
        for bad in [
            &b"5 junk\r\nhello\r\n0\r\n\r\n"[..],
            b"5;a\xc3\x9d\r\nhello\r\n0\r\n\r\n",
            b"5;a\x01\r\nhello\r\n0\r\n\r\n",
        ] {
            assert_eq!(
                ChunkedTracker::default().feed(bad),
                Err(FramingError),
                "{}",
                bad.escape_ascii()
            );
        }
        for good in [
            &b"5 \t;ext=1\r\nhello\r\n0\r\n\r\n"[..],
            b"5;a=\"b c\";d\r\nhello\r\n0\r\n\r\n",
            b"5  \r\nhello\r\n0\r\n\r\n",
        ] {
            let mut t = ChunkedTracker::default();
            assert_eq!(t.feed(good), Ok(good.len()), "{}", good.escape_ascii());
            assert!(t.done());
        }
    }
}
