//! Percent-encoding for the gateway's own requests and messages (an
//! introspection form body, a purge published to other nodes): the
//! unreserved characters (RFC 3986 §2.3) and `keep` as they are, every
//! other byte as `%XX`.

/// Appends `bytes` to `out`, percent-encoded except for the unreserved
/// characters and the bytes in `keep`.
pub fn percent_encode(out: &mut Vec<u8>, bytes: &[u8], keep: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in bytes {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') || keep.contains(&b)
        {
            out.push(b);
        } else {
            out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreserved_and_kept_bytes_stay_the_rest_is_escaped() {
        let mut out = Vec::new();
        percent_encode(&mut out, b"a-Z.0_~ +/=&%\x7f\xc3", b"");
        assert_eq!(out, b"a-Z.0_~%20%2B%2F%3D%26%25%7F%C3");
        out.clear();
        percent_encode(&mut out, b"/a b/", b"/");
        assert_eq!(out, b"/a%20b/");
    }
}
