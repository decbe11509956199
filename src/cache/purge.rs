//! [cold] Purging: which stored responses a `POST /cache/purge` names.
//! A purge is sent to every worker (and applied before the admin answers);
//! each shard drops, or with `soft` marks stale, the objects it matches.
//! Where `[redis]` is configured it is also published to the other nodes
//! as a `message` (the purge as a query string, after the sending node's
//! name, so a node skips its own).

/// What to purge: a path (exact, or every path under it), on one host or
/// on all, across every cached route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Purge {
    /// Lower-case host; `None`: any host.
    pub host: Option<Box<[u8]>>,
    pub path: Box<[u8]>,
    /// Every path starting with `path`.
    pub prefix: bool,
    /// Mark stale (revalidated before use, still usable by stale-if-error)
    /// instead of removing.
    pub soft: bool,
}

impl Purge {
    /// Whether a primary key (`cache::key::primary_key`: route, NUL, host
    /// and path, NUL, the rest) is for a purged URL.
    pub fn matches(&self, key: &[u8]) -> bool {
        let mut parts = key.split(|&b| b == 0);
        let (Some(_route), Some(host_path)) = (parts.next(), parts.next()) else {
            return false;
        };
        let split = host_path
            .iter()
            .position(|&b| b == b'/')
            .unwrap_or(host_path.len());
        let (host, path) = host_path.split_at(split);
        if self.host.as_deref().is_some_and(|h| h != host) {
            return false;
        }
        if self.prefix {
            path.starts_with(&self.path)
        } else {
            *path == *self.path
        }
    }

    /// Reads `host`, `path`, `prefix` and `soft` from a query string
    /// (percent-decoded).
    pub fn from_query(query: &[u8]) -> Result<Purge, &'static str> {
        let mut purge = Purge {
            host: None,
            path: Box::new([]),
            prefix: false,
            soft: false,
        };
        let mut have_path = false;
        for pair in query.split(|&b| b == b'&').filter(|p| !p.is_empty()) {
            let (name, value) = match pair.iter().position(|&b| b == b'=') {
                Some(at) => (&pair[..at], &pair[at + 1..]),
                None => (pair, &b""[..]),
            };
            let value = percent_decode(value).ok_or("a malformed %-escape")?;
            let flag = || match &value[..] {
                b"true" | b"1" | b"" => Ok(true),
                b"false" | b"0" => Ok(false),
                _ => Err("prefix and soft take true or false"),
            };
            match name {
                b"host" => purge.host = Some(value.to_ascii_lowercase().into_boxed_slice()),
                b"path" => {
                    if !value.starts_with(b"/") {
                        return Err("path must start with /");
                    }
                    purge.path = value.into_boxed_slice();
                    have_path = true;
                }
                b"prefix" => purge.prefix = flag()?,
                b"soft" => purge.soft = flag()?,
                _ => return Err("unknown parameter: use host, path, prefix, soft"),
            }
        }
        if !have_path {
            return Err("path is required (path=/ with prefix=true purges everything)");
        }
        Ok(purge)
    }
}

impl Purge {
    /// The purge as the query string `from_query` reads back.
    pub fn to_query(&self) -> String {
        use crate::http::form::percent_encode;
        let mut out = b"path=".to_vec();
        percent_encode(&mut out, &self.path, b"/");
        if let Some(host) = &self.host {
            out.extend_from_slice(b"&host=");
            percent_encode(&mut out, host, b"/");
        }
        if self.prefix {
            out.extend_from_slice(b"&prefix=true");
        }
        if self.soft {
            out.extend_from_slice(b"&soft=true");
        }
        // Percent-encoding leaves only ASCII.
        String::from_utf8(out).unwrap_or_default()
    }

    /// What a node publishes for the others: its name, a space, the purge.
    pub fn message(&self, node: &str) -> Vec<u8> {
        format!("{node} {}", self.to_query()).into_bytes()
    }

    /// A published purge and the node that sent it.
    pub fn from_message(message: &[u8]) -> Result<(&str, Purge), &'static str> {
        let at = message
            .iter()
            .position(|&b| b == b' ')
            .ok_or("no node name")?;
        let node = std::str::from_utf8(&message[..at]).map_err(|_| "node name not UTF-8")?;
        Ok((node, Purge::from_query(&message[at + 1..])?))
    }
}

fn percent_decode(s: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                let text = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(text, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(route: &str, host_path: &str, rest: &str) -> Vec<u8> {
        [
            route.as_bytes(),
            b"\0",
            host_path.as_bytes(),
            b"\0",
            rest.as_bytes(),
        ]
        .concat()
    }

    #[test]
    fn exact_and_prefix_purges_on_one_host_or_all() {
        let exact = Purge::from_query(b"path=/a/b").unwrap();
        assert!(exact.matches(&key("r", "x.test/a/b", "q=1")));
        assert!(exact.matches(&key("other", "y.test/a/b", "")));
        assert!(!exact.matches(&key("r", "x.test/a/bc", "")));
        assert!(!exact.matches(&key("r", "x.test/a", "")));
        let prefix = Purge::from_query(b"path=/a/&prefix=true&host=X.Test").unwrap();
        assert!(prefix.matches(&key("r", "x.test/a/b", "")));
        assert!(prefix.matches(&key("r", "x.test/a/", "")));
        assert!(!prefix.matches(&key("r", "y.test/a/b", "")), "another host");
        assert!(!prefix.matches(&key("r", "x.test/b", "")));
        let all = Purge::from_query(b"path=%2F&prefix").unwrap();
        assert!(all.matches(&key("r", "anything/at/all", "")));
        assert!(!all.matches(b"no-separators"));
        assert!(Purge::from_query(b"path=/x&soft=1").unwrap().soft);
        let off = Purge::from_query(b"path=/x&prefix=false&soft=0").unwrap();
        assert!(!off.prefix && !off.soft);
    }

    #[test]
    fn a_published_purge_reads_back_as_it_was_sent() {
        for query in [
            &b"path=/a/b"[..],
            b"path=/a%20b%2B%26c%3D%0A%FF&host=Shop.Test&prefix=true",
            b"path=/&prefix=true&soft=true",
            b"path=/x&soft=1",
        ] {
            let purge = Purge::from_query(query).unwrap();
            let message = purge.message("host:42:beef");
            let (node, back) = Purge::from_message(&message).unwrap();
            assert_eq!(node, "host:42:beef");
            assert_eq!(back, purge, "{}", String::from_utf8_lossy(&message));
        }
        assert_eq!(
            Purge::from_query(b"path=/a%20b&prefix=1")
                .unwrap()
                .to_query(),
            "path=/a%20b&prefix=true"
        );
        assert!(Purge::from_message(b"no-space").is_err());
        assert!(Purge::from_message(b"node path=x").is_err());
        assert!(Purge::from_message(b"\xff path=/x").is_err());
    }

    #[test]
    fn bad_purges_say_why() {
        assert!(Purge::from_query(b"").is_err());
        assert!(Purge::from_query(b"host=x").is_err());
        assert!(Purge::from_query(b"path=x").is_err());
        assert!(Purge::from_query(b"path=/x&prefix=maybe").is_err());
        assert!(Purge::from_query(b"path=/x&color=red").is_err());
        assert!(Purge::from_query(b"path=/%zz").is_err());
        assert!(Purge::from_query(b"path=/%4").is_err());
        assert_eq!(
            &*Purge::from_query(b"path=/a%20b+c").unwrap().path,
            b"/a b c"
        );
    }
}
