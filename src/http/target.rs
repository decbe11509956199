//! Request-path normalization (RFC 3986 §6.2.2), in place, before routing.
//!
//! A route that guards `/admin` must see `//admin`, `/./admin`,
//! `/x/../admin` and `/%61dmin` as `/admin`, and the upstream must receive
//! the path the route was chosen for. So the path is rewritten in the read
//! buffer itself (normalizing never lengthens it): percent-encoded
//! unreserved characters decoded, remaining escapes uppercased, dot
//! segments removed, and (by default) runs of slashes merged. What cannot be
//! normalized safely is refused: malformed escapes, and escapes of `/`
//! (unless configured), `\`, NUL or other control characters, since servers
//! behind the gateway disagree on what those mean.
//!
//! No allocation, no I/O, no imports from the rest of the crate: fuzzed alone.

/// What to do with `%2F` (an encoded slash) in a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EncodedSlash {
    /// 400: upstreams disagree on whether it separates segments.
    #[default]
    Reject,
    /// Keep it encoded (uppercased): part of a segment, not a separator.
    Keep,
    /// Decode it to `/` before dot segments are removed.
    Decode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NormalizeOptions {
    pub merge_slashes: bool,
    pub encoded_slash: EncodedSlash,
}

impl Default for NormalizeOptions {
    fn default() -> Self {
        NormalizeOptions {
            merge_slashes: true,
            encoded_slash: EncodedSlash::Reject,
        }
    }
}

/// Why a path was refused (400).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetError {
    /// `%` not followed by two hex digits.
    BadEscape,
    /// `%2F` while `encoded_slash = "reject"`.
    EncodedSlash,
    /// A backslash, raw or encoded (`%5C`).
    Backslash,
    /// An escape of NUL or another control character.
    EncodedControl,
}

impl TargetError {
    pub fn reason(self) -> &'static str {
        match self {
            TargetError::BadEscape => "malformed percent-escape in the path",
            TargetError::EncodedSlash => "encoded slash (%2F) in the path",
            TargetError::Backslash => "backslash in the path",
            TargetError::EncodedControl => "encoded control character in the path",
        }
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

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

const UPPER_HEX: &[u8; 16] = b"0123456789ABCDEF";

/// Normalizes the path `path[..]` in place; returns its new length (never
/// more than the old). An empty path (absolute-form with no path) and the
/// asterisk form stay as they are.
pub fn normalize_path(path: &mut [u8], opts: NormalizeOptions) -> Result<usize, TargetError> {
    if path.first() != Some(&b'/') {
        return Ok(path.len());
    }
    let len = decode_escapes(path, opts.encoded_slash)?;
    Ok(remove_dot_segments(&mut path[..len], opts.merge_slashes))
}

/// Step 1: percent-encoding normalization. Writes at `w <= r`.
fn decode_escapes(path: &mut [u8], slash: EncodedSlash) -> Result<usize, TargetError> {
    let (mut r, mut w) = (0, 0);
    while r < path.len() {
        let b = path[r];
        if b == b'\\' {
            return Err(TargetError::Backslash);
        }
        if b != b'%' {
            path[w] = b;
            r += 1;
            w += 1;
            continue;
        }
        let (Some(hi), Some(lo)) = (
            path.get(r + 1).copied().and_then(hex),
            path.get(r + 2).copied().and_then(hex),
        ) else {
            return Err(TargetError::BadEscape);
        };
        let decoded = hi << 4 | lo;
        r += 3;
        if is_unreserved(decoded) {
            path[w] = decoded;
            w += 1;
            continue;
        }
        match decoded {
            b'/' => match slash {
                EncodedSlash::Reject => return Err(TargetError::EncodedSlash),
                EncodedSlash::Decode => {
                    path[w] = b'/';
                    w += 1;
                    continue;
                }
                EncodedSlash::Keep => {}
            },
            b'\\' => return Err(TargetError::Backslash),
            0..=0x1f | 0x7f => return Err(TargetError::EncodedControl),
            _ => {}
        }
        path[w] = b'%';
        path[w + 1] = UPPER_HEX[usize::from(hi)];
        path[w + 2] = UPPER_HEX[usize::from(lo)];
        w += 3;
    }
    Ok(w)
}

/// Step 2: RFC 3986 §5.2.4 on an absolute path, in place (segments are
/// copied down; `..` pops the last written one, never above the root), with
/// empty segments dropped when `merge_slashes`.
fn remove_dot_segments(path: &mut [u8], merge_slashes: bool) -> usize {
    let n = path.len();
    // Output always starts with the root '/'.
    let mut w = 1;
    let mut r = 1;
    loop {
        // The segment path[r..end] (without its leading '/').
        let end = path[r..]
            .iter()
            .position(|&b| b == b'/')
            .map_or(n, |i| r + i);
        let segment_len = end - r;
        let last = end == n;
        let is_dot = segment_len == 1 && path[r] == b'.';
        let is_dot_dot = segment_len == 2 && path[r] == b'.' && path[r + 1] == b'.';
        if is_dot || is_dot_dot {
            if is_dot_dot {
                // Drop the last output segment (and its '/'), keeping the root.
                if w > 1 {
                    let cut = path[..w - 1].iter().rposition(|&b| b == b'/').unwrap_or(0);
                    w = cut + 1;
                }
            }
            // A trailing "." or ".." leaves the path ending in '/', which is
            // where `w` stands already.
        } else if segment_len == 0 && merge_slashes && !last {
            // "//": skip the empty segment.
        } else {
            path.copy_within(r..end, w);
            w += segment_len;
            if !last {
                path[w] = b'/';
                w += 1;
            }
        }
        if last {
            break;
        }
        r = end + 1;
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm_with(input: &str, opts: NormalizeOptions) -> Result<String, TargetError> {
        let mut buf = input.as_bytes().to_vec();
        let n = normalize_path(&mut buf, opts)?;
        Ok(String::from_utf8(buf[..n].to_vec()).unwrap())
    }

    fn norm(input: &str) -> Result<String, TargetError> {
        norm_with(input, NormalizeOptions::default())
    }

    #[test]
    fn hostile_targets_normalize_to_what_a_route_guards() {
        for (input, expected) in [
            ("/admin", "/admin"),
            ("//admin", "/admin"),
            ("/./admin", "/admin"),
            ("/x/../admin", "/admin"),
            ("/%61dmin", "/admin"),
            ("/%2e%2e/admin", "/admin"),
            ("/%2E/admin", "/admin"),
            ("/public/../internal", "/internal"),
            ("/public/./../internal", "/internal"),
            ("/../internal", "/internal"),
            ("/../../../etc/passwd", "/etc/passwd"),
            ("/a/b/c/./../../g", "/a/g"),
            ("/a/b/..", "/a/"),
            ("/a/b/.", "/a/b/"),
            ("/a/b/", "/a/b/"),
            ("/..", "/"),
            ("/.", "/"),
            ("/", "/"),
            ("///", "/"),
            ("/a//b///c", "/a/b/c"),
            ("/a/.b/..c/...", "/a/.b/..c/..."),
            ("/a/%7euser", "/a/~user"),
            ("/a%20b", "/a%20b"),
            ("/a%3fb", "/a%3Fb"),
            ("/caf%c3%a9", "/caf%C3%A9"),
            ("/x/..%2e/y", "/x/.../y"),
            ("/x/%2e%2E/y", "/y"),
            ("/..a/b", "/..a/b"),
            ("", ""),
            ("*", "*"),
        ] {
            assert_eq!(norm(input).as_deref(), Ok(expected), "{input}");
        }
    }

    #[test]
    fn what_cannot_be_normalized_safely_is_refused() {
        for (input, error) in [
            ("/a%2fb", TargetError::EncodedSlash),
            ("/a%2Fb", TargetError::EncodedSlash),
            ("/a%5cb", TargetError::Backslash),
            ("/a\\b", TargetError::Backslash),
            ("/a%00b", TargetError::EncodedControl),
            ("/a%0d%0a", TargetError::EncodedControl),
            ("/a%1f", TargetError::EncodedControl),
            ("/a%7f", TargetError::EncodedControl),
            ("/a%", TargetError::BadEscape),
            ("/a%4", TargetError::BadEscape),
            ("/a%g1", TargetError::BadEscape),
            ("/a%1g", TargetError::BadEscape),
        ] {
            assert_eq!(norm(input), Err(error), "{input}");
        }
    }

    #[test]
    fn every_refusal_says_why() {
        let reasons = [
            TargetError::BadEscape,
            TargetError::EncodedSlash,
            TargetError::Backslash,
            TargetError::EncodedControl,
        ]
        .map(TargetError::reason);
        assert!(reasons.iter().all(|r| r.contains("path")), "{reasons:?}");
        for (i, a) in reasons.iter().enumerate() {
            assert!(reasons[i + 1..].iter().all(|b| a != b), "distinct");
        }
    }

    #[test]
    fn encoded_slash_and_slash_merging_are_configurable() {
        let keep = NormalizeOptions {
            encoded_slash: EncodedSlash::Keep,
            ..NormalizeOptions::default()
        };
        assert_eq!(norm_with("/a%2fb/../c", keep).as_deref(), Ok("/c"));
        assert_eq!(norm_with("/a%2f..%2fb", keep).as_deref(), Ok("/a%2F..%2Fb"));
        let decode = NormalizeOptions {
            encoded_slash: EncodedSlash::Decode,
            ..NormalizeOptions::default()
        };
        assert_eq!(norm_with("/a%2f..%2fb", decode).as_deref(), Ok("/b"));
        assert_eq!(norm_with("/x%2F%2Fy", decode).as_deref(), Ok("/x/y"));
        let no_merge = NormalizeOptions {
            merge_slashes: false,
            ..NormalizeOptions::default()
        };
        assert_eq!(norm_with("/a//b", no_merge).as_deref(), Ok("/a//b"));
        assert_eq!(norm_with("//a/../b", no_merge).as_deref(), Ok("//b"));
    }

    /// Normalizing twice changes nothing, and the result never has dot
    /// segments or (merging) empty ones: checked over many generated paths.
    #[test]
    fn normalization_is_idempotent_and_leaves_no_dot_segments() {
        let parts: [&str; 10] = [
            "a", ".", "..", "", "%2e", "%2E%2e", "%41", "b%20", "...", "%7e",
        ];
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..20_000 {
            let mut path = String::new();
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let mut x = seed;
            for _ in 0..(x % 7) + 1 {
                x /= 7;
                path.push('/');
                path.push_str(parts[(x % 10) as usize]);
                x /= 10;
            }
            let once = norm(&path).unwrap();
            assert_eq!(norm(&once).as_deref(), Ok(once.as_str()), "{path}");
            assert!(once.starts_with('/'), "{path} -> {once}");
            assert!(once.len() <= path.len());
            for segment in once.split('/').skip(1) {
                assert!(segment != "." && segment != "..", "{path} -> {once}");
            }
            assert!(!once.contains("//"), "{path} -> {once}");
        }
    }
}
