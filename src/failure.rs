//! Every way a request can fail, and the one table that turns each into what
//! the client sees (status, JSON body, whether the connection closes). This
//! is DESIGN.md's failure table in code; keep the two in step.

use bytes::{BufMut, BytesMut};

use crate::auth::AuthRefusal;
use crate::http::{self, ChunkError, ParseError, ResponseError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Malformed or ambiguous request (400, close).
    BadRequest(&'static str),
    /// Head larger than `max_header_bytes` or too many header lines (431, close).
    HeadTooLarge,
    /// A request line (target) longer than `max_header_bytes` (414, close;
    /// RFC 9112 §3).
    UriTooLong,
    /// Body larger than the route's limit (413, close).
    BodyTooLarge,
    /// Head not received within `header_read_timeout` (408, close).
    HeaderTimeout,
    /// No route matched (404).
    NotFound,
    /// `Expect` with anything but 100-continue (417, close).
    ExpectationFailed,
    /// A method or transfer coding ringgate does not implement (501, close).
    NotImplemented(&'static str),
    /// Connection to the upstream refused or failed (502).
    UpstreamConnect,
    /// The upstream closed or reset before a complete response head (502).
    UpstreamReset,
    /// The upstream's response was malformed or ambiguous (502).
    UpstreamMalformed(&'static str),
    /// Connecting to the upstream took longer than `connect_timeout` (504).
    UpstreamConnectTimeout,
    /// No response head within `response_timeout` (504).
    UpstreamTimeout,
    /// The client stopped sending its body or sent a malformed one (400, close).
    BadRequestBody(&'static str),
    /// On a listener with client authentication, Host names a server the
    /// connection's handshake did not cover (421, close: the client must
    /// connect again with that name as SNI).
    Misdirected,
    /// The route needs authentication the request did not pass (401 with
    /// `WWW-Authenticate`, or 403 for a consumer the route does not admit;
    /// RFC 6750 §3). The body is not read.
    Unauthorized(AuthRefusal),
    /// Every endpoint of the upstream is down (health checks) and the
    /// upstream refuses rather than failing open (503, Retry-After).
    NoHealthyEndpoint,
    /// The upstream's circuit breaker is full: its queue was full, or the
    /// request waited `queue_timeout` for room (503, Retry-After).
    UpstreamOverloaded,
    /// The client's address is refused by an IP rule (403; the
    /// connection stays open: it may be a proxy's, carrying others).
    IpForbidden,
    /// A CORS preflight from an origin, or for a method or header, the
    /// route's policy does not allow (403).
    CorsRefused,
    /// A backend of an aggregate route failed and the route does not
    /// answer with part (502).
    AggregateIncomplete,
    /// A rate limit refused the request (429, Retry-After, RateLimit-*).
    RateLimited {
        limit: u64,
        reset: u64,
        retry_after: u64,
    },
}

/// `Retry-After` on a 503 for credentials that could not be checked.
const AUTH_RETRY_AFTER_SECS: u64 = 5;

/// `Retry-After` on a 503 for an upstream with no healthy endpoint.
const NO_ENDPOINT_RETRY_AFTER_SECS: u64 = 5;

/// `Retry-After` on a 503 for an upstream at its circuit breaker's limits.
const OVERLOADED_RETRY_AFTER_SECS: u64 = 1;

/// Stable indices for per-worker failure counters.
pub const FAILURE_KINDS: usize = 24;

impl Failure {
    /// One of each kind (messages and numbers are placeholders), in index
    /// order: for per-kind metrics and tests.
    pub const ALL: [Failure; FAILURE_KINDS] = [
        Failure::BadRequest(""),
        Failure::HeadTooLarge,
        Failure::BodyTooLarge,
        Failure::HeaderTimeout,
        Failure::NotFound,
        Failure::ExpectationFailed,
        Failure::NotImplemented(""),
        Failure::UpstreamConnect,
        Failure::UpstreamReset,
        Failure::UpstreamMalformed(""),
        Failure::UpstreamConnectTimeout,
        Failure::UpstreamTimeout,
        Failure::BadRequestBody(""),
        Failure::RateLimited {
            limit: 0,
            reset: 0,
            retry_after: 0,
        },
        Failure::UriTooLong,
        Failure::Misdirected,
        Failure::Unauthorized(AuthRefusal::Invalid),
        Failure::Unauthorized(AuthRefusal::Forbidden),
        Failure::Unauthorized(AuthRefusal::Unavailable),
        Failure::NoHealthyEndpoint,
        Failure::UpstreamOverloaded,
        Failure::IpForbidden,
        Failure::CorsRefused,
        Failure::AggregateIncomplete,
    ];

    pub fn status(self) -> u16 {
        match self {
            Failure::BadRequest(_) | Failure::BadRequestBody(_) => 400,
            Failure::HeadTooLarge => 431,
            Failure::UriTooLong => 414,
            Failure::BodyTooLarge => 413,
            Failure::HeaderTimeout => 408,
            Failure::NotFound => 404,
            Failure::ExpectationFailed => 417,
            Failure::NotImplemented(_) => 501,
            Failure::UpstreamConnect
            | Failure::UpstreamReset
            | Failure::UpstreamMalformed(_)
            | Failure::AggregateIncomplete => 502,
            Failure::UpstreamConnectTimeout | Failure::UpstreamTimeout => 504,
            Failure::RateLimited { .. } => 429,
            Failure::Misdirected => 421,
            Failure::Unauthorized(AuthRefusal::Forbidden)
            | Failure::IpForbidden
            | Failure::CorsRefused => 403,
            Failure::Unauthorized(AuthRefusal::Unavailable)
            | Failure::NoHealthyEndpoint
            | Failure::UpstreamOverloaded => 503,
            Failure::Unauthorized(_) => 401,
        }
    }

    /// Machine-readable code in the JSON body and in metrics labels.
    pub fn code(self) -> &'static str {
        match self {
            Failure::BadRequest(_) => "bad_request",
            Failure::HeadTooLarge => "header_too_large",
            Failure::UriTooLong => "uri_too_long",
            Failure::BodyTooLarge => "body_too_large",
            Failure::HeaderTimeout => "header_timeout",
            Failure::NotFound => "no_route",
            Failure::ExpectationFailed => "expectation_failed",
            Failure::NotImplemented(_) => "not_implemented",
            Failure::UpstreamConnect => "upstream_connect_failed",
            Failure::UpstreamReset => "upstream_reset",
            Failure::UpstreamMalformed(_) => "upstream_malformed_response",
            Failure::UpstreamConnectTimeout => "upstream_connect_timeout",
            Failure::UpstreamTimeout => "upstream_timeout",
            Failure::BadRequestBody(_) => "bad_request_body",
            Failure::RateLimited { .. } => "rate_limited",
            Failure::Misdirected => "misdirected_request",
            Failure::Unauthorized(AuthRefusal::Forbidden) => "forbidden",
            Failure::Unauthorized(AuthRefusal::Unavailable) => "auth_unavailable",
            Failure::Unauthorized(_) => "unauthorized",
            Failure::NoHealthyEndpoint => "no_healthy_upstream",
            Failure::UpstreamOverloaded => "upstream_overloaded",
            Failure::IpForbidden => "ip_forbidden",
            Failure::CorsRefused => "cors_forbidden",
            Failure::AggregateIncomplete => "aggregate_incomplete",
        }
    }

    pub fn index(self) -> usize {
        match self {
            Failure::BadRequest(_) => 0,
            Failure::HeadTooLarge => 1,
            Failure::BodyTooLarge => 2,
            Failure::HeaderTimeout => 3,
            Failure::NotFound => 4,
            Failure::ExpectationFailed => 5,
            Failure::NotImplemented(_) => 6,
            Failure::UpstreamConnect => 7,
            Failure::UpstreamReset => 8,
            Failure::UpstreamMalformed(_) => 9,
            Failure::UpstreamConnectTimeout => 10,
            Failure::UpstreamTimeout => 11,
            Failure::BadRequestBody(_) => 12,
            Failure::RateLimited { .. } => 13,
            Failure::UriTooLong => 14,
            Failure::Misdirected => 15,
            Failure::Unauthorized(AuthRefusal::Forbidden) => 17,
            Failure::Unauthorized(AuthRefusal::Unavailable) => 18,
            Failure::Unauthorized(_) => 16,
            Failure::NoHealthyEndpoint => 19,
            Failure::UpstreamOverloaded => 20,
            Failure::IpForbidden => 21,
            Failure::CorsRefused => 22,
            Failure::AggregateIncomplete => 23,
        }
    }

    fn message(self) -> &'static str {
        match self {
            Failure::BadRequest(why)
            | Failure::BadRequestBody(why)
            | Failure::NotImplemented(why) => why,
            Failure::UpstreamMalformed(why) => why,
            Failure::HeadTooLarge => "request head exceeds the configured limit",
            Failure::UriTooLong => "request target exceeds the configured limit",
            Failure::BodyTooLarge => "request body exceeds the route's limit",
            Failure::HeaderTimeout => "request head not received in time",
            Failure::NotFound => "no route matches this request",
            Failure::ExpectationFailed => "only Expect: 100-continue is supported",
            Failure::UpstreamConnect => "could not connect to the upstream",
            Failure::UpstreamReset => "the upstream closed the connection before responding",
            Failure::UpstreamConnectTimeout => "timed out connecting to the upstream",
            Failure::UpstreamTimeout => "the upstream did not respond in time",
            Failure::RateLimited { .. } => {
                "rate limit exceeded; retry after the time in Retry-After"
            }
            Failure::Misdirected => {
                "this connection's TLS handshake did not cover the requested host"
            }
            Failure::Unauthorized(AuthRefusal::Missing) => "this route needs credentials",
            Failure::Unauthorized(AuthRefusal::Invalid) => "the credentials are not valid",
            Failure::Unauthorized(AuthRefusal::Forbidden) => {
                "the credentials do not allow this route"
            }
            Failure::Unauthorized(AuthRefusal::Unavailable) => {
                "the credentials cannot be checked now; retry after the time in Retry-After"
            }
            Failure::NoHealthyEndpoint => {
                "no endpoint of the upstream is healthy; retry after the time in Retry-After"
            }
            Failure::UpstreamOverloaded => {
                "the upstream is at its limits; retry after the time in Retry-After"
            }
            Failure::IpForbidden => "requests from this address are not allowed here",
            Failure::CorsRefused => {
                "this origin, method or header is not allowed by the route's CORS policy"
            }
            Failure::AggregateIncomplete => {
                "a backend of this aggregate route failed; see x-aggregate-missing"
            }
        }
    }

    /// Whether the upstream endpoint is to blame (it refused, broke,
    /// stalled or spoke something other than HTTP), as outlier detection
    /// counts failures.
    pub fn is_upstream_fault(self) -> bool {
        matches!(
            self,
            Failure::UpstreamConnect
                | Failure::UpstreamReset
                | Failure::UpstreamMalformed(_)
                | Failure::UpstreamConnectTimeout
                | Failure::UpstreamTimeout
        )
    }

    /// Whether the client connection must close after this answer. Client
    /// errors close (the rest of the stream cannot be trusted); 404 and
    /// upstream failures leave a healthy client connection open.
    pub fn closes_connection(self) -> bool {
        !matches!(
            self,
            Failure::NotFound
                | Failure::RateLimited { .. }
                | Failure::Unauthorized(_)
                | Failure::UpstreamConnect
                | Failure::UpstreamReset
                | Failure::UpstreamMalformed(_)
                | Failure::UpstreamConnectTimeout
                | Failure::UpstreamTimeout
                | Failure::NoHealthyEndpoint
                | Failure::UpstreamOverloaded
                | Failure::IpForbidden
                | Failure::CorsRefused
                | Failure::AggregateIncomplete
        )
    }

    /// Appends the complete response. `close` adds `Connection: close`;
    /// a non-empty `request_id` is echoed in `x-request-id`.
    pub fn write_response(self, out: &mut BytesMut, close: bool, request_id: &[u8]) {
        self.write_response_with(out, close, request_id, |_| {});
    }

    /// `write_response`, with `extra` writing more header lines (a route's
    /// CORS headers) before the head ends.
    pub fn write_response_with(
        self,
        out: &mut BytesMut,
        close: bool,
        request_id: &[u8],
        extra: impl FnOnce(&mut BytesMut),
    ) {
        let message = self.message();
        let code = self.code();
        let body_len =
            br#"{"error":"","status":000,"message":""}"#.len() + code.len() + message.len();
        http::write::status_line(out, self.status());
        out.put_slice(b"content-type: application/json\r\n");
        http::write::content_length(out, body_len as u64);
        if !request_id.is_empty() {
            http::write::header(out, b"x-request-id", request_id);
        }
        if let Failure::RateLimited {
            limit,
            reset,
            retry_after,
        } = self
        {
            out.put_slice(b"retry-after: ");
            http::write::decimal(out, retry_after);
            out.put_slice(b"\r\n");
            crate::ratelimit::write_headers(
                out,
                &crate::ratelimit::Decision {
                    allowed: false,
                    limit,
                    remaining: 0,
                    reset_secs: reset,
                    retry_after_secs: retry_after,
                    defer: false,
                },
            );
        }
        if self == Failure::NoHealthyEndpoint {
            out.put_slice(b"retry-after: ");
            http::write::decimal(out, NO_ENDPOINT_RETRY_AFTER_SECS);
            out.put_slice(b"\r\n");
        }
        if self == Failure::UpstreamOverloaded {
            out.put_slice(b"retry-after: ");
            http::write::decimal(out, OVERLOADED_RETRY_AFTER_SECS);
            out.put_slice(b"\r\n");
        }
        if self == Failure::Unauthorized(AuthRefusal::Unavailable) {
            out.put_slice(b"retry-after: ");
            http::write::decimal(out, AUTH_RETRY_AFTER_SECS);
            out.put_slice(b"\r\n");
        } else if let Failure::Unauthorized(why) = self {
            out.put_slice(match why {
                AuthRefusal::Missing => {
                    b"www-authenticate: Bearer realm=\"ringgate\"\r\n".as_slice()
                }
                AuthRefusal::Invalid => {
                    b"www-authenticate: Bearer realm=\"ringgate\", error=\"invalid_token\"\r\n"
                }
                AuthRefusal::Forbidden => {
                    b"www-authenticate: Bearer realm=\"ringgate\", error=\"insufficient_scope\"\r\n"
                }
                AuthRefusal::Unavailable => b"",
            });
        }
        extra(out);
        if close {
            out.put_slice(b"connection: close\r\n");
        }
        out.put_slice(b"\r\n");
        out.put_slice(br#"{"error":""#);
        out.put_slice(code.as_bytes());
        out.put_slice(br#"","status":"#);
        http::write::decimal(out, u64::from(self.status()));
        out.put_slice(br#","message":""#);
        out.put_slice(message.as_bytes());
        out.put_slice(br#""}"#);
    }
}

impl From<ParseError> for Failure {
    fn from(e: ParseError) -> Failure {
        match e {
            ParseError::Malformed(why) => Failure::BadRequest(why),
            ParseError::TooManyHeaders | ParseError::HeadTooLarge => Failure::HeadTooLarge,
            ParseError::UriTooLong => Failure::UriTooLong,
            ParseError::BadHost => {
                Failure::BadRequest("HTTP/1.1 requests need exactly one valid Host header")
            }
            ParseError::LengthWithTransferEncoding => {
                Failure::BadRequest("Content-Length together with Transfer-Encoding is ambiguous")
            }
            ParseError::BadContentLength => {
                Failure::BadRequest("invalid or conflicting Content-Length")
            }
            ParseError::BadTransferEncoding => {
                Failure::BadRequest("Transfer-Encoding must end in chunked")
            }
            ParseError::TransferEncodingInHttp10 => {
                Failure::BadRequest("Transfer-Encoding is not allowed in HTTP/1.0 requests")
            }
            ParseError::UnsupportedTransferCoding => {
                Failure::NotImplemented("only the chunked transfer coding is supported")
            }
            ParseError::UnsupportedMethod => Failure::NotImplemented("CONNECT is not supported"),
            ParseError::UnsupportedExpectation => Failure::ExpectationFailed,
        }
    }
}

impl From<ResponseError> for Failure {
    fn from(e: ResponseError) -> Failure {
        Failure::UpstreamMalformed(match e {
            ResponseError::Malformed(_) => "the upstream sent a malformed response head",
            ResponseError::TooLarge => "the upstream response head is too large",
            ResponseError::BadContentLength => "the upstream sent an invalid Content-Length",
            ResponseError::LengthWithTransferEncoding => {
                "the upstream sent Content-Length with Transfer-Encoding"
            }
            ResponseError::BadTransferEncoding => {
                "the upstream sent an unsupported Transfer-Encoding"
            }
            ResponseError::UnexpectedUpgrade => {
                "the upstream switched protocols without an allowed upgrade"
            }
        })
    }
}

/// A chunked-body error from the client is the client's fault.
pub fn client_chunk_failure(_e: ChunkError) -> Failure {
    Failure::BadRequestBody("malformed chunked request body")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_bodies_carry_an_exact_content_length() {
        for f in [
            Failure::NotFound,
            Failure::UpstreamTimeout,
            Failure::BadRequest("x"),
        ] {
            let mut out = BytesMut::new();
            f.write_response(&mut out, true, b"id-1");
            let text = std::str::from_utf8(&out).unwrap();
            let (head, body) = text.split_once("\r\n\r\n").unwrap();
            let cl: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(cl, body.len(), "{text}");
            assert!(body.contains(f.code()));
        }
    }

    #[test]
    fn indices_are_distinct() {
        let all = Failure::ALL;
        let mut seen = [false; FAILURE_KINDS];
        for f in all {
            assert!(!seen[f.index()]);
            seen[f.index()] = true;
        }
    }

    #[test]
    fn auth_refusals_say_how_to_authenticate() {
        for (why, status, code, challenge) in [
            (
                AuthRefusal::Missing,
                401,
                "unauthorized",
                "www-authenticate: Bearer realm=\"ringgate\"\r\n",
            ),
            (
                AuthRefusal::Invalid,
                401,
                "unauthorized",
                "www-authenticate: Bearer realm=\"ringgate\", error=\"invalid_token\"\r\n",
            ),
            (
                AuthRefusal::Forbidden,
                403,
                "forbidden",
                "www-authenticate: Bearer realm=\"ringgate\", error=\"insufficient_scope\"\r\n",
            ),
        ] {
            let f = Failure::Unauthorized(why);
            assert_eq!((f.status(), f.code()), (status, code));
            assert!(!f.closes_connection());
            let mut out = BytesMut::new();
            f.write_response(&mut out, false, b"");
            let text = std::str::from_utf8(&out).unwrap();
            assert!(text.starts_with(&format!("HTTP/1.1 {status} ")), "{text}");
            assert!(text.contains(challenge), "{text}");
            assert_eq!(text.matches("www-authenticate").count(), 1);
            let (head, body) = text.split_once("\r\n\r\n").unwrap();
            assert!(!head.contains("connection: close"));
            assert!(body.contains(code));
        }
        assert_eq!(
            Failure::Unauthorized(AuthRefusal::Missing).index(),
            Failure::Unauthorized(AuthRefusal::Invalid).index()
        );
        let mut out = BytesMut::new();
        Failure::NotFound.write_response(&mut out, false, b"");
        assert!(
            !std::str::from_utf8(&out)
                .unwrap()
                .contains("www-authenticate")
        );
    }
}
