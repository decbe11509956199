//! Upstream response heads, held to the same standard as requests: anything
//! ambiguous is refused (the client sees 502), never relayed.

use std::mem::MaybeUninit;

use super::{
    HeaderSpan, MAX_HEADERS, Span, TransferCoding, Version, classify_transfer_encoding,
    list_elements, parse_content_length, trim_ows,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseError {
    Malformed(&'static str),
    TooLarge,
    BadContentLength,
    LengthWithTransferEncoding,
    BadTransferEncoding,
    /// 101 Switching Protocols where no upgrade was allowed.
    UnexpectedUpgrade,
}

/// How the response body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseFraming {
    /// HEAD, 1xx, 204 and 304 responses: no body whatever the headers say.
    None,
    Length(u64),
    Chunked,
    /// No length: the body ends when the upstream closes.
    UntilClose,
}

#[derive(Debug, Clone, Copy)]
pub struct ResponseHead {
    pub len: usize,
    pub version: Version,
    /// The reason phrase is not kept: RFC 9112 §4 lets it be absent or
    /// carry obs-text, and a client SHOULD ignore it; the gateway writes
    /// the standard phrase for the status instead.
    pub status: u16,
    pub framing: ResponseFraming,
    /// Whether the upstream lets us reuse the connection afterwards.
    pub keep_alive: bool,
    pub connection_names_others: bool,
    /// The Content-Length value, kept for HEAD and 304 responses.
    pub content_length: Option<u64>,
}

impl ResponseHead {
    pub fn is_interim(&self) -> bool {
        (100..200).contains(&self.status)
    }
}

/// Parses a response head; `Ok(None)` when incomplete. A 101 is an
/// error: no upgrade was asked for (see `parse_response_upgrading`).
pub fn parse_response(
    buf: &[u8],
    max_header_bytes: usize,
    max_headers: usize,
    request_was_head: bool,
    headers: &mut Vec<HeaderSpan>,
) -> Result<Option<ResponseHead>, ResponseError> {
    parse_response_upgrading(
        buf,
        max_header_bytes,
        max_headers,
        request_was_head,
        false,
        headers,
    )
}

/// `parse_response` for a request that may have asked to upgrade: with
/// `upgrade_asked`, a 101 that names its protocol in `Upgrade` is a
/// final answer with no body (the bytes after it are the new protocol's).
pub fn parse_response_upgrading(
    buf: &[u8],
    max_header_bytes: usize,
    max_headers: usize,
    request_was_head: bool,
    upgrade_asked: bool,
    headers: &mut Vec<HeaderSpan>,
) -> Result<Option<ResponseHead>, ResponseError> {
    headers.clear();
    let mut raw: [MaybeUninit<httparse::Header<'_>>; MAX_HEADERS] =
        [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut []);
    let limit = max_headers.min(MAX_HEADERS);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut res,
        buf,
        &mut raw[..limit],
    ) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => {
            return if buf.len() > max_header_bytes {
                Err(ResponseError::TooLarge)
            } else {
                Ok(None)
            };
        }
        Err(httparse::Error::TooManyHeaders) => return Err(ResponseError::TooLarge),
        Err(_) => {
            return Err(ResponseError::Malformed(
                "invalid status line or header line",
            ));
        }
    };
    if len > max_header_bytes {
        return Err(ResponseError::TooLarge);
    }
    let (Some(minor), Some(status)) = (res.version, res.code) else {
        return Err(ResponseError::Malformed("incomplete status line"));
    };
    if !(100..=599).contains(&status) {
        return Err(ResponseError::Malformed("status code out of range"));
    }
    let version = if minor == 1 {
        Version::Http11
    } else {
        Version::Http10
    };

    let mut content_length: Option<u64> = None;
    let mut saw_transfer_encoding = false;
    let mut conn_close = false;
    let mut conn_keep_alive = false;
    let mut connection_names_others = false;
    let mut names_upgrade = false;
    for h in res.headers.iter() {
        let name = h.name.as_bytes();
        headers.push(HeaderSpan {
            name: Span::of(buf, name),
            value: Span::of(buf, h.value),
        });
        match name.len() {
            10 if name.eq_ignore_ascii_case(b"connection") => {
                for token in list_elements(h.value) {
                    if token.eq_ignore_ascii_case(b"close") {
                        conn_close = true;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") {
                        conn_keep_alive = true;
                    } else {
                        connection_names_others = true;
                    }
                }
            }
            14 if name.eq_ignore_ascii_case(b"content-length") => {
                let n = parse_content_length(h.value).ok_or(ResponseError::BadContentLength)?;
                if content_length.is_some_and(|prev| prev != n) {
                    return Err(ResponseError::BadContentLength);
                }
                content_length = Some(n);
            }
            17 if name.eq_ignore_ascii_case(b"transfer-encoding") => saw_transfer_encoding = true,
            7 if name.eq_ignore_ascii_case(b"upgrade") => {
                names_upgrade = !trim_ows(h.value).is_empty();
            }
            _ => {}
        }
    }
    if status == 101 {
        if !upgrade_asked {
            return Err(ResponseError::UnexpectedUpgrade);
        }
        if !names_upgrade {
            return Err(ResponseError::Malformed("101 without an Upgrade header"));
        }
        return Ok(Some(ResponseHead {
            len,
            version,
            status,
            framing: ResponseFraming::None,
            keep_alive: false,
            connection_names_others,
            content_length: None,
        }));
    }

    let no_body =
        request_was_head || (100..200).contains(&status) || status == 204 || status == 304;
    let framing = if no_body {
        ResponseFraming::None
    } else if saw_transfer_encoding {
        if content_length.is_some() {
            return Err(ResponseError::LengthWithTransferEncoding);
        }
        let values = res
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("transfer-encoding"))
            .map(|h| h.value);
        match classify_transfer_encoding(values) {
            TransferCoding::Chunked => ResponseFraming::Chunked,
            _ => return Err(ResponseError::BadTransferEncoding),
        }
    } else {
        match content_length {
            Some(n) => ResponseFraming::Length(n),
            None => ResponseFraming::UntilClose,
        }
    };
    let keep_alive = match version {
        Version::Http11 => !conn_close,
        Version::Http10 => conn_keep_alive && !conn_close,
    } && framing != ResponseFraming::UntilClose;
    Ok(Some(ResponseHead {
        len,
        version,
        status,
        framing,
        keep_alive,
        connection_names_others,
        content_length,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_101_is_final_only_when_an_upgrade_was_asked_and_named() {
        let raw = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x02hi";
        let mut headers = Vec::new();
        assert!(matches!(
            parse_response(raw, 8192, 64, false, &mut headers),
            Err(ResponseError::UnexpectedUpgrade)
        ));
        let head = parse_response_upgrading(raw, 8192, 64, false, true, &mut headers)
            .unwrap()
            .unwrap();
        assert_eq!(
            (head.status, head.framing, head.keep_alive),
            (101, ResponseFraming::None, false)
        );
        // The new protocol's bytes are after the head, not part of it.
        assert_eq!(&raw[head.len..], b"\x81\x02hi");
        let unnamed = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n\r\n";
        assert!(matches!(
            parse_response_upgrading(unnamed, 8192, 64, false, true, &mut headers),
            Err(ResponseError::Malformed(_))
        ));
        // Any other answer to an upgrade request is an ordinary response.
        let refused = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\nno";
        let head = parse_response_upgrading(refused, 8192, 64, false, true, &mut headers)
            .unwrap()
            .unwrap();
        assert_eq!(
            (head.status, head.framing),
            (403, ResponseFraming::Length(2))
        );
    }

    fn parse(raw: &[u8], head: bool) -> Result<Option<ResponseHead>, ResponseError> {
        parse_response(raw, 8192, 64, head, &mut Vec::new())
    }

    #[test]
    fn framing_follows_rfc9112_section_6_3() {
        let h = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", false)
            .unwrap()
            .unwrap();
        assert_eq!(h.framing, ResponseFraming::Length(5));
        assert!(h.keep_alive);
        let h = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true)
            .unwrap()
            .unwrap();
        assert_eq!(h.framing, ResponseFraming::None);
        assert_eq!(h.content_length, Some(5));
        let h = parse(
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!(h.framing, ResponseFraming::None);
        let h = parse(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!(h.framing, ResponseFraming::Chunked);
        let h = parse(b"HTTP/1.1 200 OK\r\n\r\n", false).unwrap().unwrap();
        assert_eq!(h.framing, ResponseFraming::UntilClose);
        assert!(!h.keep_alive);
        let h = parse(b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", false)
            .unwrap()
            .unwrap();
        assert!(!h.keep_alive);
    }

    #[test]
    fn ambiguous_responses_are_refused() {
        assert_eq!(
            parse(
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
                false
            )
            .unwrap_err(),
            ResponseError::BadContentLength
        );
        assert_eq!(
            parse(
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
                false
            )
            .unwrap_err(),
            ResponseError::LengthWithTransferEncoding
        );
        assert!(parse(b"HTTP/1.1 2000 OK\r\n\r\n", false).is_err());
        assert!(parse(b"garbage\r\n\r\n", false).is_err());
        assert!(parse(b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n", false).is_err());
    }

    /// RFC 9112 §4: the reason phrase may be absent (even the space before
    /// it) or carry obs-text; such responses are relayed, the reason ignored.
    #[test]
    fn status_lines_without_or_with_odd_reason_phrases_parse() {
        for line in [
            &b"HTTP/1.1 200\r\n"[..],
            b"HTTP/1.1 200 \r\n",
            "HTTP/1.1 200 Réussi\r\n".as_bytes(),
            b"HTTP/1.1 200 R\xe9ussi\r\n",
            b"HTTP/1.1 200 \xff\xfe\r\n",
            b"HTTP/1.1 200 OK\tfine\r\n",
            b"HTTP/1.1 200\n",
        ] {
            let mut raw = line.to_vec();
            raw.extend_from_slice(b"Content-Length: 2\r\n\r\nok");
            let mut headers = Vec::new();
            let h = parse_response(&raw, 8192, 64, false, &mut headers)
                .unwrap_or_else(|e| panic!("{:?}: {e:?}", String::from_utf8_lossy(line)))
                .unwrap();
            assert_eq!(h.status, 200);
            assert_eq!(h.framing, ResponseFraming::Length(2));
            assert_eq!(headers.len(), 1);
            assert_eq!(headers[0].name.get(&raw), b"Content-Length");
        }
        for interim in [&b"HTTP/1.1 103\r\n\r\n"[..], b"HTTP/1.1 100 \xe9\r\n\r\n"] {
            let h = parse(interim, false).unwrap().unwrap();
            assert!(h.is_interim());
        }
    }

    #[test]
    fn spans_of_empty_parts_outside_the_buffer_are_empty() {
        let buf = b"abc";
        assert_eq!(Span::of(buf, b""), Span::default());
        assert_eq!(Span::of(buf, &buf[1..2]), Span { start: 1, end: 2 });
        assert_eq!(Span::of(buf, &buf[3..]), Span { start: 3, end: 3 });
    }

    #[test]
    fn interim_responses_have_no_body() {
        let h = parse(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n", false)
            .unwrap()
            .unwrap();
        assert!(h.is_interim());
        assert_eq!(h.framing, ResponseFraming::None);
    }

    #[test]
    fn interim_means_1xx() {
        for (status, interim) in [
            (100, true),
            (103, true),
            (199, true),
            (200, false),
            (304, false),
        ] {
            let raw = format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n");
            let h = parse(raw.as_bytes(), false).unwrap().unwrap();
            assert_eq!(h.is_interim(), interim, "{status}");
        }
    }

    #[test]
    fn the_head_limit_is_inclusive() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
        let at = |max: usize, bytes: &[u8]| {
            parse_response(bytes, max, 64, false, &mut Vec::new()).map(|h| h.map(|h| h.len))
        };
        assert_eq!(at(raw.len(), raw), Ok(Some(raw.len())));
        assert_eq!(at(raw.len() - 1, raw), Err(ResponseError::TooLarge));
        let partial = &raw[..raw.len() - 2];
        assert_eq!(at(partial.len() + 1, partial), Ok(None));
        assert_eq!(at(partial.len(), partial), Ok(None));
        assert_eq!(at(partial.len() - 1, partial), Err(ResponseError::TooLarge));
    }

    #[test]
    fn only_the_named_headers_are_interpreted() {
        // Same-length names: Set-Cookie (10), Content-Digest (14),
        // If-Modified-Since (17).
        let h = parse(
            b"HTTP/1.1 200 OK\r\nSet-Cookie: close\r\nContent-Digest: sha\r\nIf-Modified-Since: chunked\r\nContent-Length: 2\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert!(h.keep_alive && !h.connection_names_others);
        assert_eq!(h.framing, ResponseFraming::Length(2));
        let h = parse(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert!(!h.keep_alive);
        // HTTP/1.0: kept alive only when asked, and never when also closed.
        let keep = |raw: &[u8]| parse(raw, false).unwrap().unwrap().keep_alive;
        assert!(keep(
            b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n"
        ));
        assert!(!keep(
            b"HTTP/1.0 200 OK\r\nConnection: keep-alive, close\r\nContent-Length: 0\r\n\r\n"
        ));
        assert!(!keep(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n"));
    }
}
