//! A strict, incremental decoder for the chunked transfer coding
//! (RFC 9112 §7.1). It never buffers: it walks whatever bytes have arrived
//! and says what they are, so the relay can re-frame data canonically
//! (chunk extensions and trailers are dropped, never forwarded).
//!
//! Strictness: hex sizes without sign or whitespace, overflow refused, CRLF
//! required everywhere (a bare LF or CR is an error), bounded extensions and
//! trailers.

/// Longest chunk-size line (size + extensions) we accept.
const MAX_LINE: usize = 4096;
/// Most trailer bytes we accept before the final CRLF.
const MAX_TRAILERS: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkError {
    BadSize,
    SizeOverflow,
    BadLineEnding,
    LineTooLong,
    BadTrailer,
}

/// What the next bytes of the input are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The first `n` bytes are framing already accounted for; skip them.
    Skip(usize),
    /// A chunk of `size` data bytes begins after `consumed` framing bytes.
    ChunkStart { consumed: usize, size: u64 },
    /// The first `n` bytes are body data.
    Data(usize),
    /// The CRLF ending a chunk's data (`n` bytes).
    ChunkEnd(usize),
    /// The last chunk and trailers ended after `n` bytes: the body is over.
    End(usize),
    /// The input is exhausted; read more.
    NeedMore,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    SizeStart,
    Size,
    /// Whitespace after the size: only more of it or `;` may follow
    /// (RFC 9112 §7.1.1, BWS before a chunk extension).
    SizeWhitespace,
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    TrailerLineStart,
    TrailerLine,
    TrailerLf,
    EndLf,
    Done,
}

#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: State,
    size: u64,
    remaining: u64,
    line_len: usize,
    trailer_len: usize,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkedDecoder {
    pub fn new() -> Self {
        ChunkedDecoder {
            state: State::SizeStart,
            size: 0,
            remaining: 0,
            line_len: 0,
            trailer_len: 0,
        }
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Classifies the front of `input`. Call again with the unconsumed rest.
    pub fn step(&mut self, input: &[u8]) -> Result<Step, ChunkError> {
        if self.state == State::Data {
            if input.is_empty() {
                return Ok(Step::NeedMore);
            }
            let n = (input.len() as u64).min(self.remaining) as usize;
            self.remaining -= n as u64;
            if self.remaining == 0 {
                self.state = State::DataCr;
            }
            return Ok(Step::Data(n));
        }
        for (i, &b) in input.iter().enumerate() {
            let consumed = i + 1;
            match self.state {
                State::SizeStart | State::Size => {
                    let digit = match b {
                        b'0'..=b'9' => b - b'0',
                        b'a'..=b'f' => b - b'a' + 10,
                        b'A'..=b'F' => b - b'A' + 10,
                        b';' if self.state == State::Size => {
                            self.state = State::Extension;
                            continue;
                        }
                        b'\r' if self.state == State::Size => {
                            self.state = State::SizeLf;
                            continue;
                        }
                        b' ' | b'\t' if self.state == State::Size => {
                            self.state = State::SizeWhitespace;
                            self.bump_line()?;
                            continue;
                        }
                        _ => return Err(ChunkError::BadSize),
                    };
                    if self.size > (u64::MAX >> 4) {
                        return Err(ChunkError::SizeOverflow);
                    }
                    self.size = (self.size << 4) | u64::from(digit);
                    self.state = State::Size;
                    self.bump_line()?;
                }
                State::SizeWhitespace => match b {
                    b' ' | b'\t' => self.bump_line()?,
                    b';' => self.state = State::Extension,
                    // "5 \r\n" or "5 6": not a size any parser agrees on.
                    _ => return Err(ChunkError::BadSize),
                },
                State::Extension => match b {
                    b'\r' => self.state = State::SizeLf,
                    b'\n' => return Err(ChunkError::BadLineEnding),
                    b'\t' | 0x20..=0x7e | 0x80..=0xff => self.bump_line()?,
                    _ => return Err(ChunkError::BadSize),
                },
                State::SizeLf => {
                    if b != b'\n' {
                        return Err(ChunkError::BadLineEnding);
                    }
                    self.line_len = 0;
                    if self.size == 0 {
                        self.state = State::TrailerLineStart;
                        continue;
                    }
                    self.remaining = self.size;
                    let size = self.size;
                    self.size = 0;
                    self.state = State::Data;
                    return Ok(Step::ChunkStart { consumed, size });
                }
                State::DataCr => {
                    if b != b'\r' {
                        return Err(ChunkError::BadLineEnding);
                    }
                    self.state = State::DataLf;
                }
                State::DataLf => {
                    if b != b'\n' {
                        return Err(ChunkError::BadLineEnding);
                    }
                    self.state = State::SizeStart;
                    return Ok(Step::ChunkEnd(consumed));
                }
                State::TrailerLineStart => match b {
                    b'\r' => self.state = State::EndLf,
                    b'\n' => return Err(ChunkError::BadLineEnding),
                    b':' | b' ' | b'\t' => return Err(ChunkError::BadTrailer),
                    _ => {
                        self.bump_trailer()?;
                        self.state = State::TrailerLine;
                    }
                },
                State::TrailerLine => match b {
                    b'\r' => self.state = State::TrailerLf,
                    b'\n' => return Err(ChunkError::BadLineEnding),
                    b'\t' | 0x20..=0x7e | 0x80..=0xff => self.bump_trailer()?,
                    _ => return Err(ChunkError::BadTrailer),
                },
                State::TrailerLf => {
                    if b != b'\n' {
                        return Err(ChunkError::BadLineEnding);
                    }
                    self.state = State::TrailerLineStart;
                }
                State::EndLf => {
                    if b != b'\n' {
                        return Err(ChunkError::BadLineEnding);
                    }
                    self.state = State::Done;
                    return Ok(Step::End(consumed));
                }
                // Not reached in this loop (a chunk's data is handled
                // above, and callers stop at End); answered without a
                // panic all the same.
                State::Data => return Ok(Step::Skip(i)),
                State::Done => return Ok(Step::End(i)),
            }
        }
        if input.is_empty() {
            Ok(Step::NeedMore)
        } else {
            Ok(Step::Skip(input.len()))
        }
    }

    fn bump_line(&mut self) -> Result<(), ChunkError> {
        self.line_len += 1;
        if self.line_len > MAX_LINE {
            return Err(ChunkError::LineTooLong);
        }
        Ok(())
    }

    fn bump_trailer(&mut self) -> Result<(), ChunkError> {
        self.trailer_len += 1;
        if self.trailer_len > MAX_TRAILERS {
            return Err(ChunkError::BadTrailer);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `input` fed in pieces of `piece` bytes; returns the data.
    fn decode(input: &[u8], piece: usize) -> Result<(Vec<u8>, Vec<u64>), ChunkError> {
        let mut dec = ChunkedDecoder::new();
        let mut data = Vec::new();
        let mut sizes = Vec::new();
        for part in input.chunks(piece) {
            let mut pos = 0;
            loop {
                match dec.step(&part[pos..])? {
                    Step::Skip(n) | Step::ChunkEnd(n) => pos += n,
                    Step::ChunkStart { consumed, size } => {
                        pos += consumed;
                        sizes.push(size);
                    }
                    Step::Data(n) => {
                        data.extend_from_slice(&part[pos..pos + n]);
                        pos += n;
                    }
                    Step::End(n) => {
                        assert_eq!(pos + n, part.len(), "nothing after the end in these tests");
                        return Ok((data, sizes));
                    }
                    Step::NeedMore => break,
                }
                if pos == part.len() {
                    break;
                }
            }
        }
        Err(ChunkError::BadSize)
    }

    #[test]
    fn decodes_whole_and_split_across_every_boundary() {
        let body =
            b"5\r\nhello\r\n1a;ext=\"x\"\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-T: 1\r\n\r\n";
        for piece in 1..body.len() {
            let (data, sizes) = decode(body, piece).unwrap();
            assert_eq!(data, b"helloabcdefghijklmnopqrstuvwxyz");
            assert_eq!(sizes, vec![5, 26]);
        }
    }

    #[test]
    fn rejects_bad_sizes_and_overflow() {
        assert_eq!(
            decode(b"-5\r\nhello\r\n0\r\n\r\n", 64),
            Err(ChunkError::BadSize)
        );
        assert_eq!(
            decode(b" 5\r\nhello\r\n0\r\n\r\n", 64),
            Err(ChunkError::BadSize)
        );
        assert_eq!(
            decode(b"5 \r\nhello\r\n0\r\n\r\n", 64),
            Err(ChunkError::BadSize),
            "whitespace after a size is only allowed before an extension"
        );
        assert_eq!(
            decode(b"5 6\r\nhello\r\n0\r\n\r\n", 64),
            Err(ChunkError::BadSize)
        );
        assert_eq!(
            decode(b"0x5\r\nhello\r\n0\r\n\r\n", 64),
            Err(ChunkError::BadSize)
        );
        assert_eq!(
            decode(b"fffffffffffffffff\r\n", 64),
            Err(ChunkError::SizeOverflow)
        );
    }

    #[test]
    fn rejects_bare_lf_and_missing_crlf_after_data() {
        assert_eq!(
            decode(b"5\nhello\r\n0\r\n\r\n", 64),
            Err(ChunkError::BadSize)
        );
        assert_eq!(
            decode(b"5\r\nhelloX\r\n0\r\n\r\n", 64),
            Err(ChunkError::BadLineEnding)
        );
        assert_eq!(
            decode(b"5\r\nhello\n0\r\n\r\n", 64),
            Err(ChunkError::BadLineEnding)
        );
        assert_eq!(decode(b"0\r\n\n", 64), Err(ChunkError::BadLineEnding));
    }

    /// RFC 9112 §7.1.1: BWS may precede the `;` of an extension, and
    /// unrecognized extensions are ignored (dropped, never forwarded).
    #[test]
    fn accepts_whitespace_before_extensions_and_drops_them() {
        let body = b"5 ;x\r\nhello\r\n3\t; a=b ; c=\"d e\"\r\nabc\r\nA \t ;z\r\n0123456789\r\n0 ;last\r\n\r\n";
        for piece in 1..body.len() {
            let (data, sizes) = decode(body, piece).unwrap();
            assert_eq!(data, b"helloabc0123456789");
            assert_eq!(sizes, vec![5, 3, 10]);
        }
    }

    #[test]
    fn sizes_take_upper_and_lower_case_hex_up_to_u64_max() {
        let (data, sizes) =
            decode(b"A\r\n0123456789\r\nb\r\n0123456789a\r\n0\r\n\r\n", 64).unwrap();
        assert_eq!(sizes, vec![10, 11]);
        assert_eq!(data.len(), 21);
        let mut d = ChunkedDecoder::new();
        assert_eq!(
            d.step(b"FFFFFFFFFFFFFFFF\r\n"),
            Ok(Step::ChunkStart {
                consumed: 18,
                size: u64::MAX
            })
        );
        let mut d = ChunkedDecoder::new();
        assert_eq!(
            d.step(b"10000000000000000\r\n"),
            Err(ChunkError::SizeOverflow),
            "2^64 does not fit"
        );
        let mut d = ChunkedDecoder::new();
        assert_eq!(
            d.step(b"0000000000000000000001\r\n"),
            Ok(Step::ChunkStart {
                consumed: 24,
                size: 1
            }),
            "leading zeros are not an overflow"
        );
    }

    #[test]
    fn a_size_line_must_start_with_a_digit() {
        for bad in [&b";x\r\n\r\n"[..], b"\r\n\r\n", b" ;x\r\n\r\n", b"\t5\r\n"] {
            assert_eq!(decode(bad, 64), Err(ChunkError::BadSize), "{bad:?}");
        }
    }

    #[test]
    fn is_done_only_after_the_last_chunk_and_trailers() {
        let mut d = ChunkedDecoder::new();
        assert!(!d.is_done());
        assert_eq!(d.step(b"0\r\n"), Ok(Step::Skip(3)));
        assert!(!d.is_done(), "trailers may follow");
        assert_eq!(d.step(b"\r\n"), Ok(Step::End(2)));
        assert!(d.is_done());
        assert_eq!(d.step(b"more"), Ok(Step::End(0)), "no panic past the end");
    }

    #[test]
    fn trailers_up_to_the_cap_pass_and_one_byte_more_is_refused() {
        // The documented cap, 16 KiB, written out (not MAX_TRAILERS) so a
        // changed constant fails here.
        for (extra, ok) in [(0usize, true), (1, false)] {
            let mut body = b"0\r\nX: ".to_vec();
            body.resize(3 + 16 * 1024 + extra, b'a');
            body.extend_from_slice(b"\r\n\r\n");
            assert_eq!(decode(&body, 4096).is_ok(), ok, "cap + {extra}");
        }
    }

    #[test]
    fn bare_lf_and_malformed_trailer_lines_get_their_own_errors() {
        assert_eq!(
            decode(b"5;x\nhello\r\n0\r\n\r\n", 64),
            Err(ChunkError::BadLineEnding)
        );
        assert_eq!(
            decode(b"0\r\nX: 1\n\r\n", 64),
            Err(ChunkError::BadLineEnding)
        );
        for bad in [
            &b"0\r\n: x\r\n\r\n"[..],
            b"0\r\n x\r\n\r\n",
            b"0\r\n\tx\r\n\r\n",
        ] {
            assert_eq!(decode(bad, 64), Err(ChunkError::BadTrailer), "{bad:?}");
        }
    }

    #[test]
    fn size_lines_up_to_4_kib_pass_and_one_byte_more_is_refused() {
        for (extra, ok) in [(0usize, true), (1, false)] {
            // '5' plus the extension's bytes after ';' count: 4096 in all.
            let mut body = b"5;".to_vec();
            body.resize(2 + 4095 + extra, b'a');
            body.extend_from_slice(b"\r\nhello\r\n0\r\n\r\n");
            assert_eq!(decode(&body, 4096).is_ok(), ok, "line + {extra}");
        }
    }

    #[test]
    fn bounds_trailer_length() {
        let mut body = b"0\r\n".to_vec();
        for i in 0..(MAX_TRAILERS / 8) {
            body.extend_from_slice(format!("X-T{i:05}: abcd\r\n").as_bytes());
        }
        body.extend_from_slice(b"\r\n");
        assert_eq!(decode(&body, 64), Err(ChunkError::BadTrailer));
        let mut ok = b"0\r\n".to_vec();
        ok.extend_from_slice(b"X-T: 1\r\n\r\n");
        assert!(decode(&ok, 64).is_ok());
    }

    #[test]
    fn bounds_extension_length() {
        let mut long = b"5;".to_vec();
        long.resize(MAX_LINE + 10, b'a');
        long.extend_from_slice(b"\r\nhello\r\n0\r\n\r\n");
        assert_eq!(decode(&long, 64), Err(ChunkError::LineTooLong));
    }
}
