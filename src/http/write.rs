//! Serialization helpers: append status lines, headers and chunk framing to a
//! reusable output buffer without formatting machinery or allocation (the
//! buffer keeps its capacity across requests).

use bytes::{BufMut, BytesMut};

#[inline]
pub fn header(out: &mut BytesMut, name: &[u8], value: &[u8]) {
    out.put_slice(name);
    out.put_slice(b": ");
    out.put_slice(value);
    out.put_slice(b"\r\n");
}

/// Appends the decimal form of `n`.
#[inline]
pub fn decimal(out: &mut BytesMut, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.put_slice(&digits[i..]);
}

#[inline]
pub fn content_length(out: &mut BytesMut, n: u64) {
    out.put_slice(b"content-length: ");
    decimal(out, n);
    out.put_slice(b"\r\n");
}

/// `HTTP/1.1 200 OK\r\n` with the canonical reason phrase.
#[inline]
pub fn status_line(out: &mut BytesMut, status: u16) {
    out.put_slice(b"HTTP/1.1 ");
    decimal(out, u64::from(status));
    out.put_u8(b' ');
    out.put_slice(reason_phrase(status).as_bytes());
    out.put_slice(b"\r\n");
}

/// Chunk-size line for `size` data bytes.
#[inline]
pub fn chunk_start(out: &mut BytesMut, size: u64) {
    let mut digits = [0u8; 16];
    let mut i = digits.len();
    let mut n = size;
    loop {
        i -= 1;
        digits[i] = b"0123456789abcdef"[(n & 0xf) as usize];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.put_slice(&digits[i..]);
    out.put_slice(b"\r\n");
}

pub const CHUNK_END: &[u8] = b"\r\n";
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// The standard reason phrase, or none for a code without one here (the
/// status line then ends `299 \r\n`, which RFC 9112 §4 allows).
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        103 => "Early Hints",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        206 => "Partial Content",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        417 => "Expectation Failed",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_numbers_without_allocation_helpers() {
        let mut out = BytesMut::new();
        decimal(&mut out, 0);
        out.put_u8(b' ');
        decimal(&mut out, 18_446_744_073_709_551_615);
        out.put_u8(b' ');
        chunk_start(&mut out, 0x1a2b);
        assert_eq!(&out[..], b"0 18446744073709551615 1a2b\r\n");
    }

    #[test]
    fn headers_and_lengths_are_written_as_lines() {
        let mut out = BytesMut::new();
        header(&mut out, b"x-a", b"1 2");
        content_length(&mut out, 1234);
        assert_eq!(&out[..], b"x-a: 1 2\r\ncontent-length: 1234\r\n");
    }

    #[test]
    fn status_lines_carry_the_standard_reason_or_none() {
        let table: [(u16, &str); 36] = [
            (100, "Continue"),
            (101, "Switching Protocols"),
            (103, "Early Hints"),
            (200, "OK"),
            (201, "Created"),
            (202, "Accepted"),
            (204, "No Content"),
            (206, "Partial Content"),
            (301, "Moved Permanently"),
            (302, "Found"),
            (303, "See Other"),
            (304, "Not Modified"),
            (307, "Temporary Redirect"),
            (308, "Permanent Redirect"),
            (400, "Bad Request"),
            (401, "Unauthorized"),
            (403, "Forbidden"),
            (404, "Not Found"),
            (405, "Method Not Allowed"),
            (408, "Request Timeout"),
            (409, "Conflict"),
            (411, "Length Required"),
            (413, "Content Too Large"),
            (414, "URI Too Long"),
            (415, "Unsupported Media Type"),
            (417, "Expectation Failed"),
            (429, "Too Many Requests"),
            (431, "Request Header Fields Too Large"),
            (500, "Internal Server Error"),
            (501, "Not Implemented"),
            (502, "Bad Gateway"),
            (503, "Service Unavailable"),
            (504, "Gateway Timeout"),
            (505, "HTTP Version Not Supported"),
            (299, ""),
            (599, ""),
        ];
        for (status, reason) in table {
            let mut out = BytesMut::new();
            status_line(&mut out, status);
            assert_eq!(
                std::str::from_utf8(&out).unwrap(),
                format!("HTTP/1.1 {status} {reason}\r\n")
            );
        }
    }
}
