//! [hot] `Cache-Control` (RFC 9111 §5.2) parsed without allocating, for
//! requests and responses. Directive names are case-insensitive; values
//! are tokens or quoted strings; several header lines combine as one list.
//!
//! Where a directive is malformed the reading is the cautious one:
//! an invalid or conflicting `max-age`/`s-maxage` makes the response stale
//! (§4.2.1 encourages treating invalid freshness information as stale), a
//! qualified `no-cache="field"` or `private="field"` counts as the
//! unqualified directive (the field-list forms are optional to honour, and
//! honouring them means partial storage ringgate does not do), and
//! delta-seconds beyond 2^31 are 2^31 (§1.2.2).

/// The largest delta-seconds value (§1.2.2).
pub const MAX_DELTA: u64 = 1 << 31;

/// The response directives a shared cache acts on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResponseDirectives {
    pub max_age: Option<u64>,
    pub s_maxage: Option<u64>,
    pub no_store: bool,
    pub no_cache: bool,
    pub private: bool,
    pub public: bool,
    pub must_revalidate: bool,
    pub proxy_revalidate: bool,
    /// RFC 5861.
    pub stale_while_revalidate: Option<u64>,
    /// RFC 5861.
    pub stale_if_error: Option<u64>,
}

/// The request directives a shared cache acts on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestDirectives {
    pub no_cache: bool,
    pub no_store: bool,
    pub max_age: Option<u64>,
    /// `max-stale` without a value: any staleness.
    pub max_stale: Option<u64>,
    pub min_fresh: Option<u64>,
    pub only_if_cached: bool,
}

/// One directive: lower-cased name match is done by the caller; `value`
/// is the raw token or the quoted string's content (escapes kept).
struct Directive<'a> {
    name: &'a [u8],
    value: Option<&'a [u8]>,
}

/// The directives of one `Cache-Control` field value.
fn directives(mut s: &[u8]) -> impl Iterator<Item = Directive<'_>> {
    std::iter::from_fn(move || {
        loop {
            s = trim_start(s);
            let (first, rest) = s.split_first()?;
            if *first == b',' {
                s = rest;
                continue;
            }
            break;
        }
        let name_len = s
            .iter()
            .position(|&b| b == b'=' || b == b',' || b == b' ' || b == b'\t')
            .unwrap_or(s.len());
        let name = &s[..name_len];
        s = trim_start(&s[name_len..]);
        let mut value = None;
        if let Some(rest) = s.strip_prefix(b"=") {
            let rest = trim_start(rest);
            if let Some(quoted) = rest.strip_prefix(b"\"") {
                // A quoted string: up to the closing quote not escaped.
                let mut end = quoted.len();
                let mut i = 0;
                while i < quoted.len() {
                    match quoted[i] {
                        b'\\' => i += 2,
                        b'"' => {
                            end = i;
                            break;
                        }
                        _ => i += 1,
                    }
                }
                value = Some(&quoted[..end]);
                s = quoted.get(end + 1..).unwrap_or(&[]);
            } else {
                let len = rest
                    .iter()
                    .position(|&b| b == b',' || b == b' ' || b == b'\t')
                    .unwrap_or(rest.len());
                value = Some(&rest[..len]);
                s = &rest[len..];
            }
        }
        // Anything else before the next comma is malformed: skipped.
        let next = s.iter().position(|&b| b == b',').unwrap_or(s.len());
        s = &s[next..];
        Some(Directive { name, value })
    })
}

fn trim_start(s: &[u8]) -> &[u8] {
    let n = s
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .unwrap_or(s.len());
    &s[n..]
}

/// A delta-seconds value: `None` if malformed.
fn delta_seconds(value: Option<&[u8]>) -> Option<u64> {
    let v = value?;
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut n: u64 = 0;
    for &d in v {
        n = n.saturating_mul(10).saturating_add(u64::from(d - b'0'));
        if n >= MAX_DELTA {
            return Some(MAX_DELTA);
        }
    }
    Some(n)
}

/// Sets a freshness value: a malformed value or a second, different one
/// makes it 0 (stale).
fn set_delta(slot: &mut Option<u64>, value: Option<&[u8]>) {
    let parsed = delta_seconds(value).unwrap_or(0);
    *slot = match *slot {
        Some(seen) if seen != parsed => Some(0),
        _ => Some(parsed),
    };
}

impl ResponseDirectives {
    /// The directives of every `Cache-Control` line in `values`.
    pub fn parse<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> ResponseDirectives {
        let mut d = ResponseDirectives::default();
        for value in values {
            for directive in directives(value) {
                let name = directive.name;
                let is = |n: &[u8]| name.eq_ignore_ascii_case(n);
                if is(b"max-age") {
                    set_delta(&mut d.max_age, directive.value);
                } else if is(b"s-maxage") {
                    set_delta(&mut d.s_maxage, directive.value);
                } else if is(b"no-store") {
                    d.no_store = true;
                } else if is(b"no-cache") {
                    d.no_cache = true;
                } else if is(b"private") {
                    d.private = true;
                } else if is(b"public") {
                    d.public = true;
                } else if is(b"must-revalidate") {
                    d.must_revalidate = true;
                } else if is(b"proxy-revalidate") {
                    d.proxy_revalidate = true;
                } else if is(b"stale-while-revalidate") {
                    d.stale_while_revalidate = delta_seconds(directive.value);
                } else if is(b"stale-if-error") {
                    d.stale_if_error = delta_seconds(directive.value);
                }
            }
        }
        d
    }
}

impl RequestDirectives {
    /// The directives of every `Cache-Control` line in `values`.
    pub fn parse<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> RequestDirectives {
        let mut d = RequestDirectives::default();
        for value in values {
            for directive in directives(value) {
                let name = directive.name;
                let is = |n: &[u8]| name.eq_ignore_ascii_case(n);
                if is(b"no-cache") {
                    d.no_cache = true;
                } else if is(b"no-store") {
                    d.no_store = true;
                } else if is(b"max-age") {
                    // A malformed value asks for nothing stale-ish: 0.
                    d.max_age = Some(delta_seconds(directive.value).unwrap_or(0));
                } else if is(b"max-stale") {
                    d.max_stale = Some(match directive.value {
                        None => MAX_DELTA,
                        v => delta_seconds(v).unwrap_or(0),
                    });
                } else if is(b"min-fresh") {
                    d.min_fresh = Some(delta_seconds(directive.value).unwrap_or(0));
                } else if is(b"only-if-cached") {
                    d.only_if_cached = true;
                }
            }
        }
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(lines: &[&str]) -> ResponseDirectives {
        ResponseDirectives::parse(lines.iter().map(|l| l.as_bytes()))
    }

    #[test]
    fn response_directives_are_read_case_insensitively_across_lines() {
        let d = resp(&["Public, MAX-AGE=60", "s-maxage=\"120\", must-revalidate"]);
        assert!(d.public && d.must_revalidate);
        assert_eq!(d.max_age, Some(60));
        assert_eq!(d.s_maxage, Some(120));
        assert!(!d.no_store && !d.private && !d.no_cache);
        let d = resp(&["no-store,private , no-cache, proxy-revalidate"]);
        assert!(d.no_store && d.private && d.no_cache && d.proxy_revalidate);
        let d = resp(&["max-age=10, stale-while-revalidate=30, stale-if-error=600"]);
        assert_eq!(d.stale_while_revalidate, Some(30));
        assert_eq!(d.stale_if_error, Some(600));
        assert_eq!(resp(&[]), ResponseDirectives::default());
        assert_eq!(resp(&["", " , ,"]), ResponseDirectives::default());
    }

    #[test]
    fn malformed_freshness_is_stale_and_huge_values_are_capped() {
        assert_eq!(resp(&["max-age=abc"]).max_age, Some(0));
        assert_eq!(resp(&["max-age="]).max_age, Some(0));
        assert_eq!(resp(&["max-age"]).max_age, Some(0));
        assert_eq!(resp(&["max-age=-5"]).max_age, Some(0));
        assert_eq!(resp(&["max-age=60, max-age=60"]).max_age, Some(60));
        assert_eq!(resp(&["max-age=60", "max-age=61"]).max_age, Some(0));
        assert_eq!(
            resp(&["max-age=99999999999999999999999"]).max_age,
            Some(MAX_DELTA)
        );
        assert_eq!(resp(&["max-age=2147483647"]).max_age, Some(2_147_483_647));
        assert_eq!(resp(&["max-age=2147483648"]).max_age, Some(MAX_DELTA));
        assert_eq!(resp(&["stale-if-error=x"]).stale_if_error, None);
    }

    #[test]
    fn qualified_forms_count_as_the_directive_and_quotes_hide_commas() {
        let d = resp(&["private=\"set-cookie, x-a\", max-age=5"]);
        assert!(d.private);
        assert_eq!(d.max_age, Some(5));
        let d = resp(&["no-cache=\"set-cookie\""]);
        assert!(d.no_cache);
        // An escaped quote inside a quoted string does not end it.
        let d = resp(&["x-ext=\"a\\\"b, no-store\", public"]);
        assert!(!d.no_store && d.public);
        // Garbage between directives is skipped up to the next comma,
        // even when it looks like a directive.
        let d = resp(&["max-age=5 junk junk, public"]);
        assert_eq!(d.max_age, Some(5));
        assert!(d.public);
        let d = resp(&["max-age=5 no-store, public"]);
        assert!(!d.no_store && d.public);
        // An escaped quote does not end a quoted string: the directives
        // inside it are its text.
        let d = resp(&["x=\"a\\\", no-store, b\", public"]);
        assert!(!d.no_store && d.public, "{d:?}");
        // An empty quoted string.
        let d = resp(&["x=\"\", max-age=7"]);
        assert_eq!(d.max_age, Some(7));
        // Unknown directives are ignored; names must match whole.
        let d = resp(&["no-stored, publicity, max-ages=9"]);
        assert_eq!(d, ResponseDirectives::default());
        // An unterminated quoted string runs to the end of the line.
        let d = resp(&["x=\"open, no-store", "public"]);
        assert!(!d.no_store && d.public);
    }

    #[test]
    fn request_directives() {
        let req = |l: &str| RequestDirectives::parse([l.as_bytes()]);
        let d = req("no-cache, max-age=0");
        assert!(d.no_cache);
        assert_eq!(d.max_age, Some(0));
        assert_eq!(req("max-stale").max_stale, Some(MAX_DELTA));
        assert_eq!(req("max-stale=30").max_stale, Some(30));
        assert_eq!(req("min-fresh=10").min_fresh, Some(10));
        assert!(req("only-if-cached").only_if_cached);
        assert!(req("NO-STORE").no_store);
        assert_eq!(req("max-age=bad").max_age, Some(0));
        assert_eq!(req(""), RequestDirectives::default());
    }
}
