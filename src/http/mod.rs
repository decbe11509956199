//! [hot] The HTTP/1.1 codec, with no I/O of its own and no imports from the
//! rest of the crate, so it can be fuzzed and benchmarked alone.
//!
//! Heads are parsed with httparse; header names and values are kept as byte
//! ranges (`Span`) into the connection's read buffer, never copied. Parsing is
//! strict wherever RFC 9112 leaves room for two readings of one message
//! (request smuggling): such messages are rejected, never forwarded.

pub mod chunked;
pub mod collect;
pub mod date;
pub mod form;
pub mod request;
pub mod response;
pub mod target;
pub mod write;

pub use chunked::{ChunkError, ChunkedDecoder, Step};
pub use request::{BodyFraming, Method, ParseError, RequestHead, parse_request};
pub use response::{
    ResponseError, ResponseFraming, ResponseHead, parse_response, parse_response_upgrading,
};
pub use target::{EncodedSlash, NormalizeOptions, TargetError, normalize_path};

/// Most header lines a head may carry; heads with more are refused (431/502).
pub const MAX_HEADERS: usize = 256;

/// A byte range into the buffer a head was parsed from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Span {
    pub start: u32,
    pub end: u32,
}

impl Span {
    /// The range `part` occupies in `buf`. `part` must be a slice of `buf`
    /// (httparse hands out slices of the buffer it parsed) — except that an
    /// empty `part` may point anywhere: httparse returns a static `""` for
    /// some empty fields (a reason phrase that is absent or has obs-text), so
    /// an empty part outside `buf` is the empty span at 0, never an
    /// underflow. A non-empty part outside `buf` would be a bug; it too
    /// becomes the empty span rather than a panic on network input.
    #[inline]
    pub fn of(buf: &[u8], part: &[u8]) -> Span {
        let base = buf.as_ptr() as usize;
        let at = part.as_ptr() as usize;
        match at.checked_sub(base) {
            Some(start) if start + part.len() <= buf.len() => Span {
                start: start as u32,
                end: (start + part.len()) as u32,
            },
            _ => {
                debug_assert!(part.is_empty(), "a non-empty span outside its buffer");
                Span::default()
            }
        }
    }

    #[inline]
    pub fn get<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        &buf[self.start as usize..self.end as usize]
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    #[inline]
    pub fn len(&self) -> usize {
        (self.end - self.start) as usize
    }
}

/// One header line as ranges into the head buffer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HeaderSpan {
    pub name: Span,
    pub value: Span,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    Http10,
    Http11,
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) that a proxy never forwards, plus
/// the framing headers the gateway always writes itself.
#[inline]
pub fn is_hop_by_hop_or_framing(name: &[u8]) -> bool {
    match name.len() {
        2 => name.eq_ignore_ascii_case(b"te"),
        7 => name.eq_ignore_ascii_case(b"trailer") || name.eq_ignore_ascii_case(b"upgrade"),
        10 => name.eq_ignore_ascii_case(b"connection") || name.eq_ignore_ascii_case(b"keep-alive"),
        14 => name.eq_ignore_ascii_case(b"content-length"),
        16 => name.eq_ignore_ascii_case(b"proxy-connection"),
        17 => name.eq_ignore_ascii_case(b"transfer-encoding"),
        _ => false,
    }
}

/// Splits a comma-separated header value into trimmed, non-empty elements.
#[inline]
pub fn list_elements(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(trim_ows)
        .filter(|e| !e.is_empty())
}

#[inline]
/// The host of an authority (`host[:port]`): the port, if any, removed;
/// an IPv6 literal keeps its brackets (`[::1]:8080` → `[::1]`).
pub fn host_without_port(host: &[u8]) -> &[u8] {
    if host.first() == Some(&b'[') {
        match host.iter().position(|&b| b == b']') {
            Some(end) => &host[..=end],
            None => host,
        }
    } else {
        match host.iter().rposition(|&b| b == b':') {
            Some(colon) => &host[..colon],
            None => host,
        }
    }
}

/// The value of cookie `name` among `Cookie` header `values` (the first
/// one; names compared exactly, values raw).
pub fn cookie<'a>(values: impl Iterator<Item = &'a [u8]>, name: &[u8]) -> Option<&'a [u8]> {
    values
        .flat_map(|v| v.split(|&b| b == b';'))
        .find_map(|pair| {
            let pair = trim_ows(pair);
            let at = pair.iter().position(|&b| b == b'=')?;
            (pair[..at] == *name).then_some(&pair[at + 1..])
        })
}

pub fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// Whether the Connection header values in `head` name `name` as hop-by-hop.
pub fn connection_names(buf: &[u8], headers: &[HeaderSpan], name: &[u8]) -> bool {
    headers.iter().any(|h| {
        h.name.get(buf).eq_ignore_ascii_case(b"connection")
            && list_elements(h.value.get(buf)).any(|t| t.eq_ignore_ascii_case(name))
    })
}

/// Parses a Content-Length value, which may be a list of identical values
/// (RFC 9112 §6.3 item 5). `None` if malformed or the elements differ.
pub(crate) fn parse_content_length(value: &[u8]) -> Option<u64> {
    let mut result = None;
    for element in value.split(|&b| b == b',') {
        let element = trim_ows(element);
        if element.is_empty() || element.len() > 18 || !element.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let n = element
            .iter()
            .fold(0u64, |acc, &d| acc * 10 + u64::from(d - b'0'));
        match result {
            Some(prev) if prev != n => return None,
            _ => result = Some(n),
        }
    }
    result
}

/// Outcome of reading a Transfer-Encoding list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TransferCoding {
    /// Exactly `chunked`.
    Chunked,
    /// Ends in `chunked` but applies other codings first (e.g. `gzip, chunked`).
    OtherThenChunked,
    /// Final coding is not `chunked`, or `chunked` appears more than once.
    Invalid,
}

/// Classifies all Transfer-Encoding values of a message taken together.
pub(crate) fn classify_transfer_encoding<'a>(
    values: impl Iterator<Item = &'a [u8]>,
) -> TransferCoding {
    let mut count = 0usize;
    let mut chunked_count = 0usize;
    let mut last_is_chunked = false;
    for value in values {
        for coding in value.split(|&b| b == b',') {
            let coding = trim_ows(coding);
            if coding.is_empty() {
                continue;
            }
            count += 1;
            last_is_chunked = coding.eq_ignore_ascii_case(b"chunked");
            chunked_count += usize::from(last_is_chunked);
        }
    }
    match (last_is_chunked, chunked_count, count) {
        (true, 1, 1) => TransferCoding::Chunked,
        (true, 1, _) => TransferCoding::OtherThenChunked,
        _ => TransferCoding::Invalid,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_dropped_from_names_and_bracketed_literals() {
        assert_eq!(host_without_port(b"example.com:8080"), b"example.com");
        assert_eq!(host_without_port(b"example.com"), b"example.com");
        assert_eq!(host_without_port(b"[::1]:8080"), b"[::1]");
        assert_eq!(host_without_port(b"[::1]"), b"[::1]");
        assert_eq!(host_without_port(b""), b"");
    }

    #[test]
    fn content_length_lists_must_agree() {
        assert_eq!(parse_content_length(b"42"), Some(42));
        assert_eq!(parse_content_length(b"42, 42"), Some(42));
        assert_eq!(parse_content_length(b"42, 43"), None);
        assert_eq!(parse_content_length(b"+42"), None);
        assert_eq!(parse_content_length(b"4 2"), None);
        assert_eq!(parse_content_length(b""), None);
        assert_eq!(parse_content_length(b"9999999999999999999999"), None);
        // 18 digits is the most taken (it cannot overflow u64), 19 is not.
        assert_eq!(
            parse_content_length(b"999999999999999999"),
            Some(999_999_999_999_999_999)
        );
        assert_eq!(parse_content_length(b"1000000000000000000"), None);
    }

    #[test]
    fn spans_locate_parts_and_refuse_what_lies_outside() {
        let whole = b"GET /path HTTP/1.1";
        let buf = &whole[..9];
        let path = Span::of(buf, &buf[4..9]);
        assert_eq!((path.start, path.end), (4, 9));
        assert_eq!(path.get(buf), b"/path");
        assert_eq!(path.len(), 5);
        assert!(!path.is_empty());
        let empty = Span::of(buf, &buf[3..3]);
        assert!(empty.is_empty());
        assert_eq!(empty.len(), 0);
        // An empty part beyond the buffer's end (httparse's static "" can
        // sit anywhere) is the empty span at 0, not a range past the end.
        assert_eq!(Span::of(buf, &whole[12..12]), Span::default());
        assert_eq!(Span::of(buf, &b""[..]), Span::default());
    }

    #[test]
    fn hop_by_hop_and_framing_headers_are_known_in_any_case() {
        for name in [
            &b"te"[..],
            b"Trailer",
            b"upgrade",
            b"Connection",
            b"keep-alive",
            b"content-length",
            b"Proxy-Connection",
            b"transfer-encoding",
        ] {
            assert!(is_hop_by_hop_or_framing(name), "{:?}", name);
        }
        for name in [
            &b"tx"[..],
            b"trailed",
            b"upgradx",
            b"connectiox",
            b"keep-alivx",
            b"content-lengtx",
            b"proxy-connectiox",
            b"transfer-encodinx",
            b"content-type",
            b"host",
        ] {
            assert!(!is_hop_by_hop_or_framing(name), "{:?}", name);
        }
    }

    #[test]
    fn connection_lists_name_headers() {
        let buf = b"Connection: close, X-Trace\r\nX-Trace: 1\r\nKeep-Alive: x\r\n";
        let span = |a: usize, b: usize| Span {
            start: a as u32,
            end: b as u32,
        };
        let headers = [
            HeaderSpan {
                name: span(0, 10),
                value: span(12, 26),
            },
            HeaderSpan {
                name: span(28, 35),
                value: span(37, 38),
            },
            HeaderSpan {
                name: span(40, 50),
                value: span(52, 53),
            },
        ];
        assert_eq!(headers[0].value.get(buf), b"close, X-Trace");
        assert!(connection_names(buf, &headers, b"x-trace"));
        assert!(connection_names(buf, &headers, b"close"));
        // Named by another header's value is not named by Connection.
        assert!(!connection_names(buf, &headers, b"x"));
        assert!(!connection_names(buf, &headers, b"keep-alive"));
        assert!(!connection_names(&buf[..0], &[], b"close"));
    }

    #[test]
    fn transfer_encoding_final_coding_must_be_chunked_once() {
        let one = |v: &'static [u8]| classify_transfer_encoding(std::iter::once(v));
        assert_eq!(one(b"chunked"), TransferCoding::Chunked);
        assert_eq!(one(b"Chunked"), TransferCoding::Chunked);
        assert_eq!(one(b"gzip, chunked"), TransferCoding::OtherThenChunked);
        assert_eq!(one(b"chunked, gzip"), TransferCoding::Invalid);
        assert_eq!(one(b"chunked, chunked"), TransferCoding::Invalid);
        assert_eq!(one(b"xchunked"), TransferCoding::Invalid);
        assert_eq!(
            classify_transfer_encoding([&b"chunked"[..], b"chunked"].into_iter()),
            TransferCoding::Invalid
        );
    }
}
