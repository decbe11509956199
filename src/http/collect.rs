//! Collecting a small response body whole, for the gateway's own calls
//! (a JWKS document, an introspection answer) rather than relayed ones:
//! by length, chunked (decoded) or until close, never past a limit. Pure:
//! the caller feeds what it read and says when the peer closed, so the
//! blocking fetcher and a worker's async call share one implementation.

use super::chunked::{ChunkedDecoder, Step};
use super::response::ResponseFraming;

/// Why a body could not be collected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CollectError {
    /// Longer than the limit.
    TooLarge,
    /// Broken framing, or the peer closed before the body's end.
    Malformed(&'static str),
}

/// A body being collected.
#[derive(Debug)]
pub struct Collector {
    framing: ResponseFraming,
    limit: usize,
    decoder: ChunkedDecoder,
    body: Vec<u8>,
    done: bool,
}

impl Collector {
    /// A collector for a body framed as `framing`, of at most `limit`
    /// bytes (a declared length over it is refused at once).
    pub fn new(framing: ResponseFraming, limit: usize) -> Result<Collector, CollectError> {
        let mut body = Vec::new();
        let mut done = false;
        match framing {
            ResponseFraming::Length(n) => {
                let n = usize::try_from(n)
                    .ok()
                    .filter(|n| *n <= limit)
                    .ok_or(CollectError::TooLarge)?;
                body.reserve_exact(n);
                done = n == 0;
            }
            ResponseFraming::None => done = true,
            ResponseFraming::Chunked | ResponseFraming::UntilClose => {}
        }
        Ok(Collector {
            framing,
            limit,
            decoder: ChunkedDecoder::new(),
            body,
            done,
        })
    }

    /// Takes what belongs to the body from the front of `input`; returns
    /// how many bytes it took (the rest belong to whatever follows).
    pub fn feed(&mut self, input: &[u8]) -> Result<usize, CollectError> {
        if self.done {
            return Ok(0);
        }
        match self.framing {
            ResponseFraming::None => Ok(0),
            ResponseFraming::Length(n) => {
                let want = n as usize - self.body.len();
                let take = want.min(input.len());
                self.body.extend_from_slice(&input[..take]);
                self.done = self.body.len() == n as usize;
                Ok(take)
            }
            ResponseFraming::UntilClose => {
                self.keep(input)?;
                Ok(input.len())
            }
            ResponseFraming::Chunked => {
                let mut at = 0;
                loop {
                    let step = self
                        .decoder
                        .step(&input[at..])
                        .map_err(|_| CollectError::Malformed("bad chunked framing"))?;
                    match step {
                        Step::Skip(n)
                        | Step::ChunkEnd(n)
                        | Step::ChunkStart { consumed: n, .. } => at += n,
                        Step::Data(n) => {
                            self.keep(&input[at..at + n])?;
                            at += n;
                        }
                        Step::End(n) => {
                            self.done = true;
                            return Ok(at + n);
                        }
                        Step::NeedMore => return Ok(at),
                    }
                }
            }
        }
    }

    fn keep(&mut self, data: &[u8]) -> Result<(), CollectError> {
        if self.body.len() + data.len() > self.limit {
            return Err(CollectError::TooLarge);
        }
        self.body.extend_from_slice(data);
        Ok(())
    }

    /// Whether the whole body has been collected.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// The peer closed: that ends a body delimited by closing; any other
    /// unfinished body is cut short.
    pub fn closed(&mut self) -> Result<(), CollectError> {
        if self.done {
            return Ok(());
        }
        if self.framing == ResponseFraming::UntilClose {
            self.done = true;
            return Ok(());
        }
        Err(CollectError::Malformed("closed inside the body"))
    }

    /// The collected body.
    pub fn into_body(self) -> Vec<u8> {
        self.body
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in pieces of `step` bytes; then the close if `close`.
    fn collect(
        framing: ResponseFraming,
        limit: usize,
        input: &[u8],
        step: usize,
        close: bool,
    ) -> Result<(Vec<u8>, usize), CollectError> {
        let mut c = Collector::new(framing, limit)?;
        let mut pending: Vec<u8> = Vec::new();
        let mut used_total = 0;
        for piece in input.chunks(step.max(1)) {
            pending.extend_from_slice(piece);
            let used = c.feed(&pending)?;
            used_total += used;
            pending.drain(..used);
            if c.is_done() {
                break;
            }
        }
        if !c.is_done() && close {
            c.closed()?;
        }
        if !c.is_done() {
            return Err(CollectError::Malformed("unfinished"));
        }
        Ok((c.into_body(), used_total))
    }

    #[test]
    fn bodies_by_length_chunks_and_close_in_any_pieces() {
        for step in [1, 2, 3, 7, 1000] {
            let (body, used) =
                collect(ResponseFraming::Length(5), 10, b"helloEXTRA", step, false).unwrap();
            assert_eq!((body.as_slice(), used), (&b"hello"[..], 5), "step {step}");
            let chunked = b"3\r\nhel\r\n2;x=y\r\nlo\r\n0\r\n\r\nNEXT";
            let (body, used) = collect(ResponseFraming::Chunked, 10, chunked, step, false).unwrap();
            assert_eq!(body, b"hello", "step {step}");
            assert_eq!(
                used,
                chunked.len() - 4,
                "the next response's bytes are left"
            );
            let (body, _) = collect(ResponseFraming::UntilClose, 10, b"hello", step, true).unwrap();
            assert_eq!(body, b"hello");
        }
        assert_eq!(
            collect(ResponseFraming::None, 0, b"", 1, false).unwrap().0,
            b""
        );
        assert_eq!(
            collect(ResponseFraming::Length(0), 0, b"", 1, false)
                .unwrap()
                .0,
            b""
        );
    }

    #[test]
    fn the_limit_holds_for_every_framing() {
        assert_eq!(
            Collector::new(ResponseFraming::Length(11), 10).unwrap_err(),
            CollectError::TooLarge
        );
        assert!(collect(ResponseFraming::Length(10), 10, &[b'x'; 10], 3, false).is_ok());
        let chunked = b"6\r\nhello \r\n5\r\nworld\r\n0\r\n\r\n";
        assert_eq!(
            collect(ResponseFraming::Chunked, 10, chunked, 4, false),
            Err(CollectError::TooLarge)
        );
        assert!(collect(ResponseFraming::Chunked, 11, chunked, 4, false).is_ok());
        assert_eq!(
            collect(ResponseFraming::UntilClose, 4, b"hello", 2, true),
            Err(CollectError::TooLarge)
        );
        assert!(collect(ResponseFraming::UntilClose, 5, b"hello", 2, true).is_ok());
    }

    #[test]
    fn a_close_ends_only_a_close_delimited_body() {
        assert_eq!(
            collect(ResponseFraming::Length(9), 10, b"hello", 2, true),
            Err(CollectError::Malformed("closed inside the body"))
        );
        assert_eq!(
            collect(ResponseFraming::Chunked, 10, b"3\r\nhel", 2, true),
            Err(CollectError::Malformed("closed inside the body"))
        );
        assert!(matches!(
            collect(ResponseFraming::Chunked, 10, b"zz\r\n", 1, false),
            Err(CollectError::Malformed(_))
        ));
        // After the end, a close changes nothing and more bytes are not taken.
        let mut c = Collector::new(ResponseFraming::Length(2), 10).unwrap();
        assert_eq!(c.feed(b"ok").unwrap(), 2);
        assert_eq!(c.feed(b"more").unwrap(), 0);
        assert!(c.closed().is_ok());
        assert_eq!(c.into_body(), b"ok");
    }
}
