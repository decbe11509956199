//! Request heads: parse, validate and classify (RFC 9112 §3, §6, §7).

use std::mem::MaybeUninit;

use super::{
    HeaderSpan, MAX_HEADERS, Span, TransferCoding, Version, classify_transfer_encoding,
    list_elements, parse_content_length, trim_ows,
};

/// Why a request head was refused. The worker maps each to the answer in
/// DESIGN.md's failure table (see `failure.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    /// Syntax httparse refused: bad request line, bad header line, obs-fold,
    /// whitespace before a colon, bare CR, control characters, bad tokens.
    Malformed(&'static str),
    /// More header lines than allowed (431).
    TooManyHeaders,
    /// Head larger than `max_header_bytes` (431).
    HeadTooLarge,
    /// The request line alone is longer than `max_header_bytes` (414).
    UriTooLong,
    /// HTTP/1.1 without exactly one Host, or more than one Host (400).
    BadHost,
    /// Content-Length together with Transfer-Encoding (400).
    LengthWithTransferEncoding,
    /// Malformed or differing Content-Length values (400).
    BadContentLength,
    /// Transfer-Encoding whose final coding is not exactly `chunked` (400).
    BadTransferEncoding,
    /// Transfer-Encoding in an HTTP/1.0 request (400).
    TransferEncodingInHttp10,
    /// A transfer coding before `chunked` that we do not decode (501).
    UnsupportedTransferCoding,
    /// CONNECT / authority-form (501).
    UnsupportedMethod,
    /// Expect with anything but 100-continue (417).
    UnsupportedExpectation,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    None,
    Length(u64),
    Chunked,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Options,
    Patch,
    Trace,
    Other,
}

impl Method {
    fn classify(m: &[u8]) -> Method {
        match m {
            b"GET" => Method::Get,
            b"HEAD" => Method::Head,
            b"POST" => Method::Post,
            b"PUT" => Method::Put,
            b"DELETE" => Method::Delete,
            b"OPTIONS" => Method::Options,
            b"PATCH" => Method::Patch,
            b"TRACE" => Method::Trace,
            _ => Method::Other,
        }
    }

    /// RFC 9110 §9.2.2: a request that may be repeated without changing the
    /// outcome; the only ones ringgate retries after a stale connection.
    pub fn is_idempotent(self) -> bool {
        matches!(
            self,
            Method::Get
                | Method::Head
                | Method::Put
                | Method::Delete
                | Method::Options
                | Method::Trace
        )
    }
}

/// A parsed, validated request head. Spans point into the buffer it was
/// parsed from; header lines are in the caller's `Vec<HeaderSpan>`.
#[derive(Debug, Clone, Copy)]
pub struct RequestHead {
    /// Length of the head including the blank line.
    pub len: usize,
    pub method: Method,
    pub method_span: Span,
    /// The path part of the target (origin-form), without the query; empty
    /// for an absolute-form target with no path (forwarded as `/`).
    pub path: Span,
    /// `?` and what follows, or empty.
    pub query: Span,
    /// The effective host: the authority of an absolute-form target, else the
    /// Host header (RFC 9112 §3.2.2).
    pub host: Option<Span>,
    /// Whether `host` came from the target (so a Host header is ignored).
    pub host_from_target: bool,
    pub version: Version,
    pub framing: BodyFraming,
    /// Whether the client wants the connection kept open after this exchange.
    pub keep_alive: bool,
    pub expect_continue: bool,
    /// Connection names headers other than close/keep-alive/upgrade, which
    /// must be dropped as hop-by-hop.
    pub connection_names_others: bool,
    pub upgrade: bool,
}

/// Parses a request head from the start of `buf`.
///
/// `Ok(None)` means the head is not complete yet; the caller enforces
/// `max_header_bytes` on partial heads too. `headers` is cleared and filled.
pub fn parse_request(
    buf: &[u8],
    max_header_bytes: usize,
    max_headers: usize,
    headers: &mut Vec<HeaderSpan>,
) -> Result<Option<RequestHead>, ParseError> {
    headers.clear();
    let mut raw: [MaybeUninit<httparse::Header<'_>>; MAX_HEADERS] =
        [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let limit = max_headers.min(MAX_HEADERS);
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, &mut raw[..limit]) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => {
            return if buf.len() > max_header_bytes {
                Err(too_large(buf, max_header_bytes))
            } else {
                Ok(None)
            };
        }
        Err(httparse::Error::TooManyHeaders) => return Err(ParseError::TooManyHeaders),
        Err(e) => return Err(ParseError::Malformed(httparse_reason(e))),
    };
    if len > max_header_bytes {
        return Err(too_large(buf, max_header_bytes));
    }
    let (Some(method), Some(target), Some(minor)) = (req.method, req.path, req.version) else {
        return Err(ParseError::Malformed("incomplete request line"));
    };
    let version = if minor == 1 {
        Version::Http11
    } else {
        Version::Http10
    };
    let method_span = Span::of(buf, method.as_bytes());
    let method = Method::classify(method.as_bytes());

    let mut host: Option<Span> = None;
    let mut host_count = 0u32;
    let mut content_length: Option<u64> = None;
    let mut saw_content_length = false;
    let mut saw_transfer_encoding = false;
    let mut conn_close = false;
    let mut conn_keep_alive = false;
    let mut connection_names_others = false;
    let mut upgrade = false;
    let mut expect_continue = false;

    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        let value = h.value;
        let span = HeaderSpan {
            name: Span::of(buf, name),
            value: Span::of(buf, value),
        };
        headers.push(span);
        match name.len() {
            4 if name.eq_ignore_ascii_case(b"host") => {
                host_count += 1;
                host = Some(Span::of(buf, trim_ows(value)));
            }
            6 if name.eq_ignore_ascii_case(b"expect") => {
                if trim_ows(value).eq_ignore_ascii_case(b"100-continue") {
                    expect_continue = true;
                } else {
                    return Err(ParseError::UnsupportedExpectation);
                }
            }
            7 if name.eq_ignore_ascii_case(b"upgrade") => upgrade = true,
            10 if name.eq_ignore_ascii_case(b"connection") => {
                for token in list_elements(value) {
                    if token.eq_ignore_ascii_case(b"close") {
                        conn_close = true;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") {
                        conn_keep_alive = true;
                    } else if !token.eq_ignore_ascii_case(b"upgrade") {
                        connection_names_others = true;
                    }
                }
            }
            14 if name.eq_ignore_ascii_case(b"content-length") => {
                let n = parse_content_length(value).ok_or(ParseError::BadContentLength)?;
                if content_length.is_some_and(|prev| prev != n) {
                    return Err(ParseError::BadContentLength);
                }
                content_length = Some(n);
                saw_content_length = true;
            }
            17 if name.eq_ignore_ascii_case(b"transfer-encoding") => saw_transfer_encoding = true,
            _ => {}
        }
    }

    let framing = if saw_transfer_encoding {
        if version == Version::Http10 {
            return Err(ParseError::TransferEncodingInHttp10);
        }
        if saw_content_length {
            return Err(ParseError::LengthWithTransferEncoding);
        }
        let values = req
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("transfer-encoding"))
            .map(|h| h.value);
        match classify_transfer_encoding(values) {
            TransferCoding::Chunked => BodyFraming::Chunked,
            TransferCoding::OtherThenChunked => return Err(ParseError::UnsupportedTransferCoding),
            TransferCoding::Invalid => return Err(ParseError::BadTransferEncoding),
        }
    } else {
        match content_length {
            Some(0) | None => BodyFraming::None,
            Some(n) => BodyFraming::Length(n),
        }
    };

    // RFC 9112 §3.2: exactly one Host in HTTP/1.1, at most one in HTTP/1.0.
    if host_count > 1 || (version == Version::Http11 && host_count == 0) {
        return Err(ParseError::BadHost);
    }
    if let Some(h) = host
        && !is_valid_host(h.get(buf))
    {
        return Err(ParseError::BadHost);
    }

    let target_bytes = target.as_bytes();
    let (path, query, host_from_target) = split_target(buf, target_bytes, method)?;
    let host = host_from_target.or(host);
    if target_bytes.contains(&b'#') {
        return Err(ParseError::Malformed("fragment in request target"));
    }

    let keep_alive = match version {
        Version::Http11 => !conn_close,
        Version::Http10 => conn_keep_alive && !conn_close,
    };
    Ok(Some(RequestHead {
        len,
        method,
        method_span,
        path,
        query,
        host,
        host_from_target: host_from_target.is_some(),
        version,
        framing,
        keep_alive,
        // RFC 9110 §10.1.1: a 100-continue expectation in an HTTP/1.0
        // request is ignored (1.0 clients do not know interim responses).
        expect_continue: expect_continue
            && framing != BodyFraming::None
            && version == Version::Http11,
        connection_names_others,
        upgrade,
    }))
}

/// 414 when the request line does not end within the limit (its target is
/// what is too long), else 431.
fn too_large(buf: &[u8], max_header_bytes: usize) -> ParseError {
    if buf[..max_header_bytes.min(buf.len())].contains(&b'\n') {
        ParseError::HeadTooLarge
    } else {
        ParseError::UriTooLong
    }
}

/// Splits the request target into (path, query, authority-if-absolute-form).
fn split_target(
    buf: &[u8],
    target: &[u8],
    method: Method,
) -> Result<(Span, Span, Option<Span>), ParseError> {
    let (authority, rest) = if target.first() == Some(&b'/') {
        (None, target)
    } else if target == b"*" {
        if method != Method::Options {
            return Err(ParseError::Malformed("asterisk-form is only for OPTIONS"));
        }
        (None, target)
    } else if let Some(after_scheme) = strip_prefix_ignore_case(target, b"http://")
        .or_else(|| strip_prefix_ignore_case(target, b"https://"))
    {
        let end = after_scheme
            .iter()
            .position(|&b| b == b'/' || b == b'?')
            .unwrap_or(after_scheme.len());
        let authority = &after_scheme[..end];
        if authority.is_empty() || authority.contains(&b'@') || !is_valid_host(authority) {
            return Err(ParseError::Malformed(
                "invalid authority in absolute-form target",
            ));
        }
        (Some(Span::of(buf, authority)), &after_scheme[end..])
    } else if method == Method::Other && buf.starts_with(b"CONNECT ") {
        return Err(ParseError::UnsupportedMethod);
    } else {
        return Err(ParseError::Malformed(
            "request target must be origin-form or absolute-form",
        ));
    };
    let query_at = rest.iter().position(|&b| b == b'?').unwrap_or(rest.len());
    Ok((
        Span::of(buf, &rest[..query_at]),
        Span::of(buf, &rest[query_at..]),
        authority,
    ))
}

fn strip_prefix_ignore_case<'a>(s: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    if s.len() >= prefix.len() && s[..prefix.len()].eq_ignore_ascii_case(prefix) {
        Some(&s[prefix.len()..])
    } else {
        None
    }
}

/// RFC 3986 host[:port] characters: reg-name, IPv4 or a bracketed IPv6 literal.
fn is_valid_host(h: &[u8]) -> bool {
    h.iter().all(|&b| {
        b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b':'
                    | b'['
                    | b']'
                    | b'%'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
            )
    })
}

fn httparse_reason(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "invalid header name (whitespace before colon, or obs-fold)",
        httparse::Error::HeaderValue => "invalid character in header value",
        httparse::Error::NewLine => "invalid line ending",
        httparse::Error::Status => "invalid status",
        httparse::Error::Token => "invalid method token",
        httparse::Error::TooManyHeaders => "too many headers",
        httparse::Error::Version => "unsupported HTTP version",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a head parsed to, as owned values (spans resolved).
    fn parsed(buf: &[u8], head: &RequestHead, headers: &[HeaderSpan]) -> Vec<Vec<u8>> {
        let mut out = vec![
            head.method_span.get(buf).to_vec(),
            head.path.get(buf).to_vec(),
            head.query.get(buf).to_vec(),
            head.host.map(|h| h.get(buf).to_vec()).unwrap_or_default(),
            format!("{:?} {:?} {}", head.framing, head.version, head.keep_alive).into_bytes(),
        ];
        for h in headers {
            out.push(h.name.get(buf).to_vec());
            out.push(h.value.get(buf).to_vec());
        }
        out
    }

    /// Parses a pipelined stream the way the worker does: heads from the
    /// front of a buffer that grows by `pieces`; bodies (Content-Length
    /// only here) skipped.
    fn parse_stream(pieces: &[&[u8]]) -> Vec<Vec<Vec<u8>>> {
        let mut buf: Vec<u8> = Vec::new();
        let mut headers = Vec::new();
        let mut requests = Vec::new();
        let mut body_left = 0usize;
        for piece in pieces {
            buf.extend_from_slice(piece);
            loop {
                if body_left > 0 {
                    let n = body_left.min(buf.len());
                    buf.drain(..n);
                    body_left -= n;
                    if body_left > 0 {
                        break;
                    }
                }
                match parse_request(&buf, 8192, 64, &mut headers).unwrap() {
                    Some(head) => {
                        requests.push(parsed(&buf, &head, &headers));
                        body_left = match head.framing {
                            BodyFraming::Length(n) => n as usize,
                            _ => 0,
                        };
                        buf.drain(..head.len);
                    }
                    None => break,
                }
            }
        }
        assert!(buf.is_empty() && body_left == 0, "stream fully consumed");
        requests
    }

    /// Any byte split of a valid pipelined stream parses to the same
    /// requests: every single split point, and every pair of split points
    /// (three pieces), exhaustively.
    #[test]
    fn any_split_of_a_pipelined_stream_parses_to_the_same_requests() {
        let stream: &[u8] = b"GET /a?x=1 HTTP/1.1\r\nHost: one\r\nAccept: */*\r\n\r\n\
POST /b HTTP/1.1\r\nHost: two\r\nContent-Length: 5\r\n\r\nhello\
GET http://three/c HTTP/1.1\r\nHost: ignored\r\nConnection: close\r\n\r\n";
        let whole = parse_stream(&[stream]);
        assert_eq!(whole.len(), 3);
        for i in 0..=stream.len() {
            assert_eq!(
                parse_stream(&[&stream[..i], &stream[i..]]),
                whole,
                "split at {i}"
            );
            for j in i..=stream.len() {
                assert_eq!(
                    parse_stream(&[&stream[..i], &stream[i..j], &stream[j..]]),
                    whole,
                    "split at {i} and {j}"
                );
            }
        }
    }

    fn parse(raw: &[u8]) -> Result<Option<RequestHead>, ParseError> {
        let mut headers = Vec::new();
        parse_request(raw, 8192, 64, &mut headers)
    }

    fn head(raw: &[u8]) -> RequestHead {
        parse(raw).expect("valid").expect("complete")
    }

    #[test]
    fn parses_a_simple_get() {
        let raw = b"GET /a/b?x=1 HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\n\r\nNEXT";
        let h = head(raw);
        assert_eq!(h.len, raw.len() - 4);
        assert_eq!(h.method, Method::Get);
        assert_eq!(h.path.get(raw), b"/a/b");
        assert_eq!(h.query.get(raw), b"?x=1");
        assert_eq!(h.host.unwrap().get(raw), b"example.com");
        assert_eq!(h.framing, BodyFraming::None);
        assert!(h.keep_alive);
    }

    #[test]
    fn partial_heads_wait_and_oversized_heads_are_refused() {
        assert_eq!(
            parse(b"GET / HTTP/1.1\r\nHost: a\r\n")
                .unwrap()
                .map(|h| h.len),
            None
        );
        let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
        big.resize(9000, b'a');
        assert_eq!(parse(&big).unwrap_err(), ParseError::HeadTooLarge);
    }

    #[test]
    fn rejects_content_length_with_transfer_encoding() {
        // RFC 9112 §6.1: the classic CL.TE smuggling vector.
        let r = parse(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(r.unwrap_err(), ParseError::LengthWithTransferEncoding);
    }

    #[test]
    fn rejects_differing_duplicate_content_length() {
        let r =
            parse(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n");
        assert_eq!(r.unwrap_err(), ParseError::BadContentLength);
        let same =
            head(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n");
        assert_eq!(same.framing, BodyFraming::Length(5));
    }

    #[test]
    fn rejects_transfer_encoding_not_ending_in_chunked() {
        let r =
            parse(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n");
        assert_eq!(r.unwrap_err(), ParseError::BadTransferEncoding);
        let r = parse(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n");
        assert_eq!(r.unwrap_err(), ParseError::UnsupportedTransferCoding);
        let h = head(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n");
        assert_eq!(h.framing, BodyFraming::Chunked);
    }

    #[test]
    fn rejects_transfer_encoding_in_http10() {
        let r = parse(b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(r.unwrap_err(), ParseError::TransferEncodingInHttp10);
    }

    #[test]
    fn rejects_obs_fold_and_space_before_colon() {
        assert!(matches!(
            parse(b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n  folded\r\n\r\n"),
            Err(ParseError::Malformed(_))
        ));
        assert!(matches!(
            parse(b"GET / HTTP/1.1\r\nHost : a\r\n\r\n"),
            Err(ParseError::Malformed(_))
        ));
    }

    #[test]
    fn rejects_control_characters_and_bare_cr() {
        assert!(matches!(
            parse(b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x01b\r\n\r\n"),
            Err(ParseError::Malformed(_))
        ));
        assert!(matches!(
            parse(b"GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n"),
            Err(ParseError::Malformed(_))
        ));
        assert!(matches!(
            parse(b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x7fb\r\n\r\n"),
            Err(ParseError::Malformed(_))
        ));
    }

    #[test]
    fn rejects_invalid_method_tokens() {
        assert!(matches!(
            parse(b"G(T / HTTP/1.1\r\nHost: a\r\n\r\n"),
            Err(ParseError::Malformed(_))
        ));
    }

    #[test]
    fn requires_exactly_one_host_in_http11() {
        assert_eq!(
            parse(b"GET / HTTP/1.1\r\n\r\n").unwrap_err(),
            ParseError::BadHost
        );
        assert_eq!(
            parse(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n").unwrap_err(),
            ParseError::BadHost
        );
        assert_eq!(
            parse(b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n").unwrap_err(),
            ParseError::BadHost
        );
        let h = head(b"GET / HTTP/1.0\r\n\r\n");
        assert!(h.host.is_none());
        assert!(!h.keep_alive);
    }

    #[test]
    fn absolute_form_authority_becomes_the_host() {
        let raw = b"GET http://Api.Example.com:8080/v1?q HTTP/1.1\r\nHost: other\r\n\r\n";
        let h = head(raw);
        assert_eq!(h.host.unwrap().get(raw), b"Api.Example.com:8080");
        assert!(h.host_from_target);
        assert_eq!(h.path.get(raw), b"/v1");
        assert_eq!(h.query.get(raw), b"?q");
        let raw = b"GET http://a.com HTTP/1.1\r\nHost: a.com\r\n\r\n";
        assert_eq!(head(raw).path.get(raw), b"");
    }

    #[test]
    fn connection_header_decides_keep_alive() {
        assert!(!head(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").keep_alive);
        assert!(head(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").keep_alive);
        assert!(
            head(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: x-secret\r\n\r\n")
                .connection_names_others
        );
    }

    #[test]
    fn expect_other_than_continue_is_refused() {
        assert_eq!(
            parse(b"POST / HTTP/1.1\r\nHost: a\r\nExpect: teapot\r\nContent-Length: 1\r\n\r\n")
                .unwrap_err(),
            ParseError::UnsupportedExpectation
        );
        assert!(
            head(
                b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n"
            )
            .expect_continue
        );
    }

    #[test]
    fn connect_is_not_implemented() {
        assert_eq!(
            parse(b"CONNECT a.com:443 HTTP/1.1\r\nHost: a.com:443\r\n\r\n").unwrap_err(),
            ParseError::UnsupportedMethod
        );
    }

    #[test]
    fn fragments_in_targets_are_refused() {
        assert!(matches!(
            parse(b"GET /a#b HTTP/1.1\r\nHost: a\r\n\r\n"),
            Err(ParseError::Malformed(_))
        ));
    }

    #[test]
    fn methods_are_classified_and_only_safe_ones_retried() {
        let table = [
            (&b"GET"[..], Method::Get, true),
            (b"HEAD", Method::Head, true),
            (b"POST", Method::Post, false),
            (b"PUT", Method::Put, true),
            (b"DELETE", Method::Delete, true),
            (b"OPTIONS", Method::Options, true),
            (b"PATCH", Method::Patch, false),
            (b"TRACE", Method::Trace, true),
            (b"get", Method::Other, false),
            (b"PURGE", Method::Other, false),
        ];
        for (token, method, idempotent) in table {
            assert_eq!(Method::classify(token), method, "{:?}", token);
            assert_eq!(method.is_idempotent(), idempotent, "{method:?}");
        }
    }

    #[test]
    fn the_head_limit_is_inclusive() {
        let raw = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        let mut headers = Vec::new();
        let at = |max: usize, bytes: &[u8], headers: &mut Vec<HeaderSpan>| {
            parse_request(bytes, max, 64, headers).map(|h| h.map(|h| h.len))
        };
        assert_eq!(at(raw.len(), raw, &mut headers), Ok(Some(raw.len())));
        assert_eq!(
            at(raw.len() - 1, raw, &mut headers),
            Err(ParseError::HeadTooLarge)
        );
        // A partial head is waited for until it is past the limit.
        let partial = &raw[..raw.len() - 2];
        assert_eq!(at(partial.len(), partial, &mut headers), Ok(None));
        assert_eq!(
            at(partial.len() - 1, partial, &mut headers),
            Err(ParseError::HeadTooLarge)
        );
    }

    #[test]
    fn only_the_named_headers_are_interpreted() {
        // Same-length names: Date (4), Referer (7), User-Agent (10),
        // Accept-Charset (14), If-Modified-Since (17).
        let raw = b"POST / HTTP/1.1\r\nDate: x\r\nHost: a\r\nReferer: y\r\nUser-Agent: close\r\nAccept-Charset: abc\r\nIf-Modified-Since: chunked\r\nContent-Length: 3\r\n\r\n";
        let h = head(raw);
        assert_eq!(h.host.unwrap().get(raw), b"a");
        assert!(!h.upgrade);
        assert!(h.keep_alive && !h.connection_names_others);
        assert_eq!(h.framing, BodyFraming::Length(3));
        let h =
            head(b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n");
        assert!(h.upgrade && h.keep_alive && !h.connection_names_others);
    }

    #[test]
    fn expect_continue_needs_a_body_and_http11() {
        let expect = |raw: &[u8]| head(raw).expect_continue;
        assert!(expect(
            b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n"
        ));
        assert!(!expect(
            b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n"
        ));
        assert!(!expect(
            b"POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n"
        ));
        assert!(!expect(
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n"
        ));
    }

    #[test]
    fn target_forms_are_split_or_refused() {
        let split = |method: Method, line: &'static [u8]| {
            let target_start = line.iter().position(|&b| b == b' ').unwrap() + 1;
            let target_end = line[target_start..]
                .iter()
                .position(|&b| b == b' ')
                .map_or(line.len(), |e| target_start + e);
            split_target(line, &line[target_start..target_end], method).map(|(p, q, a)| {
                (
                    p.get(line).to_vec(),
                    q.get(line).to_vec(),
                    a.map(|a| a.get(line).to_vec()),
                )
            })
        };
        assert_eq!(
            split(Method::Get, b"GET /a?b HTTP/1.1"),
            Ok((b"/a".to_vec(), b"?b".to_vec(), None))
        );
        assert_eq!(
            split(Method::Get, b"GET http://h:1/p?q HTTP/1.1"),
            Ok((b"/p".to_vec(), b"?q".to_vec(), Some(b"h:1".to_vec())))
        );
        assert_eq!(
            split(Method::Options, b"OPTIONS * HTTP/1.1"),
            Ok((b"*".to_vec(), vec![], None))
        );
        let refused = |method, line| matches!(split(method, line), Err(ParseError::Malformed(_)));
        assert!(refused(Method::Get, b"GET * HTTP/1.1"));
        assert!(
            refused(Method::Get, b"GET http:///p HTTP/1.1"),
            "empty authority"
        );
        assert!(
            refused(Method::Get, b"GET http://u@h/p HTTP/1.1"),
            "userinfo"
        );
        assert!(
            refused(Method::Get, b"GET http://h{x/p HTTP/1.1"),
            "bad host byte"
        );
        assert!(
            refused(Method::Other, b"FOO h:1 HTTP/1.1"),
            "authority-form"
        );
        assert!(refused(Method::Get, b"GET a/b HTTP/1.1"));
        assert_eq!(
            split(Method::Other, b"CONNECT h:1 HTTP/1.1"),
            Err(ParseError::UnsupportedMethod)
        );
    }

    #[test]
    fn httparse_errors_keep_their_reasons() {
        let reason = |raw: &[u8]| match parse(raw) {
            Err(ParseError::Malformed(r)) => r,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            reason(b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n"),
            "invalid header name (whitespace before colon, or obs-fold)"
        );
        assert_eq!(
            reason(b"GET / HTTP/1.1\r\nX: a\x01b\r\n\r\n"),
            "invalid character in header value"
        );
        assert_eq!(
            reason(b"GET / HTTP/2.0\r\n\r\n"),
            "unsupported HTTP version"
        );
        assert_eq!(reason(b"G\x01T / HTTP/1.1\r\n\r\n"), "invalid method token");
    }
}
