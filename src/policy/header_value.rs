//! [hot] Header values with variables, for the routes' `request_headers`
//! and `response_headers` edits: `"${consumer}@${route}"`. Parsed once at
//! load into literal pieces and variables; a value without variables is
//! one literal, written with one copy and no lookup. Variable values are
//! written with the bytes a header may not carry (CR, LF, NUL, other
//! controls) left out, so no claim or certificate field can inject a header.

use bytes::{BufMut, BytesMut};

/// What a `${...}` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Variable {
    /// The peer address (`client_ip`).
    ClientIp,
    RequestId,
    /// The authenticated consumer's name (empty when anonymous).
    Consumer,
    /// The route's name.
    Route,
    /// The request's Host (request headers only).
    Host,
    /// A claim of the request's token (`jwt.NAME`); empty without one.
    Claim(Box<str>),
    /// The verified client certificate's subject (`tls.client_subject`).
    CertSubject,
    /// Its subjectAltName entries (`tls.client_san`).
    CertSan,
    /// Its SHA-256 fingerprint, hex (`tls.client_sha256`).
    CertSha256,
}

impl Variable {
    fn parse(name: &str) -> Option<Variable> {
        Some(match name {
            "client_ip" => Variable::ClientIp,
            "request_id" => Variable::RequestId,
            "consumer" => Variable::Consumer,
            "route" => Variable::Route,
            "host" => Variable::Host,
            "tls.client_subject" => Variable::CertSubject,
            "tls.client_san" => Variable::CertSan,
            "tls.client_sha256" => Variable::CertSha256,
            _ => {
                let claim = name.strip_prefix("jwt.")?;
                if claim.is_empty() || !claim.bytes().all(|b| b.is_ascii_graphic()) {
                    return None;
                }
                Variable::Claim(claim.into())
            }
        })
    }

    fn name(&self) -> std::borrow::Cow<'static, str> {
        match self {
            Variable::ClientIp => "client_ip".into(),
            Variable::RequestId => "request_id".into(),
            Variable::Consumer => "consumer".into(),
            Variable::Route => "route".into(),
            Variable::Host => "host".into(),
            Variable::Claim(c) => format!("jwt.{c}").into(),
            Variable::CertSubject => "tls.client_subject".into(),
            Variable::CertSan => "tls.client_san".into(),
            Variable::CertSha256 => "tls.client_sha256".into(),
        }
    }
}

/// The variable names a value may use, for error messages.
pub const VARIABLES: &str = "client_ip, request_id, consumer, route, host, jwt.CLAIM, tls.client_subject, tls.client_san, tls.client_sha256";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Text(Box<[u8]>),
    Var(Variable),
}

/// A header value as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderValue {
    Static(Box<[u8]>),
    Template(Box<[Piece]>),
}

/// What variables stand for in one request.
#[derive(Default, Clone, Copy)]
pub struct Vars<'a> {
    pub client_ip: &'a [u8],
    pub request_id: &'a [u8],
    pub consumer: &'a [u8],
    pub route: &'a [u8],
    /// `None` where the request head is gone (response headers).
    pub host: Option<&'a [u8]>,
    /// The token's claims the config's templates name.
    pub claims: &'a [(Box<str>, Box<[u8]>)],
    pub cert: Option<&'a crate::tls::identity::CertFacts>,
}

impl Vars<'_> {
    fn get(&self, v: &Variable) -> &[u8] {
        match v {
            Variable::ClientIp => self.client_ip,
            Variable::RequestId => self.request_id,
            Variable::Consumer => self.consumer,
            Variable::Route => self.route,
            Variable::Host => self.host.unwrap_or_default(),
            Variable::Claim(name) => self
                .claims
                .iter()
                .find(|(n, _)| n == name)
                .map_or(&[][..], |(_, v)| v),
            Variable::CertSubject => self.cert.map_or(&[][..], |c| c.subject.as_bytes()),
            Variable::CertSan => self.cert.map_or(&[][..], |c| c.sans.as_bytes()),
            Variable::CertSha256 => self.cert.map_or(&[][..], |c| c.fingerprint.as_bytes()),
        }
    }
}

/// A byte a header value may carry (RFC 9110 §5.5: visible, space, tab,
/// obs-text).
#[inline]
fn allowed(b: u8) -> bool {
    b == b'\t' || (b >= 0x20 && b != 0x7f)
}

impl HeaderValue {
    /// Parses `${name}` variables out of `text`; `$${` is a literal `${`.
    pub fn parse(text: &str) -> Result<HeaderValue, String> {
        let mut pieces = Vec::new();
        let mut literal = Vec::new();
        let mut rest = text;
        while let Some(at) = rest.find("${") {
            if rest[..at].ends_with('$') {
                literal.extend_from_slice(&rest.as_bytes()[..at - 1]);
                literal.extend_from_slice(b"${");
                rest = &rest[at + 2..];
                continue;
            }
            literal.extend_from_slice(&rest.as_bytes()[..at]);
            let Some(end) = rest[at..].find('}') else {
                return Err(format!("`{text}`: `${{` without a closing `}}`"));
            };
            let name = &rest[at + 2..at + end];
            let var = Variable::parse(name).ok_or_else(|| {
                format!("`{text}`: unknown variable `${{{name}}}` (known: {VARIABLES})")
            })?;
            if !literal.is_empty() {
                pieces.push(Piece::Text(std::mem::take(&mut literal).into_boxed_slice()));
            }
            pieces.push(Piece::Var(var));
            rest = &rest[at + end + 1..];
        }
        literal.extend_from_slice(rest.as_bytes());
        if pieces.is_empty() {
            return Ok(HeaderValue::Static(literal.into_boxed_slice()));
        }
        if !literal.is_empty() {
            pieces.push(Piece::Text(literal.into_boxed_slice()));
        }
        Ok(HeaderValue::Template(pieces.into_boxed_slice()))
    }

    /// The variables it uses.
    pub fn variables(&self) -> impl Iterator<Item = &Variable> {
        let pieces: &[Piece] = match self {
            HeaderValue::Static(_) => &[],
            HeaderValue::Template(p) => p,
        };
        pieces.iter().filter_map(|p| match p {
            Piece::Var(v) => Some(v),
            Piece::Text(_) => None,
        })
    }

    /// The literal text, for a value without variables.
    pub fn literal(&self) -> Option<&[u8]> {
        match self {
            HeaderValue::Static(v) => Some(v),
            HeaderValue::Template(_) => None,
        }
    }

    /// Writes `name: value\r\n`; a template that comes to nothing writes
    /// no header at all (a header set from an absent claim is not sent
    /// empty).
    #[inline]
    pub fn write_header(&self, out: &mut BytesMut, name: &[u8], vars: &Vars<'_>) {
        match self {
            HeaderValue::Static(v) => crate::http::write::header(out, name, v),
            HeaderValue::Template(pieces) => {
                let line = out.len();
                out.put_slice(name);
                out.put_slice(b": ");
                let start = out.len();
                for p in pieces.iter() {
                    match p {
                        Piece::Text(t) => out.put_slice(t),
                        Piece::Var(v) => {
                            let value = vars.get(v);
                            if value.iter().all(|&b| allowed(b)) {
                                out.put_slice(value);
                            } else {
                                for &b in value.iter().filter(|&&b| allowed(b)) {
                                    out.put_u8(b);
                                }
                            }
                        }
                    }
                }
                // Field values carry no leading or trailing whitespace; one
                // that comes to nothing is no header at all.
                while out.len() > start && matches!(out[out.len() - 1], b' ' | b'\t') {
                    out.truncate(out.len() - 1);
                }
                let lead = out[start..]
                    .iter()
                    .take_while(|&&b| b == b' ' || b == b'\t')
                    .count();
                if lead > 0 {
                    out.copy_within(start + lead.., start);
                    out.truncate(out.len() - lead);
                }
                if out.len() == start {
                    out.truncate(line);
                    return;
                }
                out.put_slice(b"\r\n");
            }
        }
    }
}

impl std::fmt::Display for HeaderValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HeaderValue::Static(v) => f.write_str(&String::from_utf8_lossy(v)),
            HeaderValue::Template(pieces) => {
                for p in pieces.iter() {
                    match p {
                        Piece::Text(t) => f.write_str(&String::from_utf8_lossy(t))?,
                        Piece::Var(v) => write!(f, "${{{}}}", v.name())?,
                    }
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(value: &HeaderValue, vars: &Vars<'_>) -> String {
        let mut out = BytesMut::new();
        value.write_header(&mut out, b"x-h", vars);
        String::from_utf8(out.to_vec()).unwrap()
    }

    #[test]
    fn values_parse_into_literals_and_variables() {
        assert_eq!(
            HeaderValue::parse("plain").unwrap(),
            HeaderValue::Static(b"plain".as_slice().into())
        );
        assert_eq!(
            HeaderValue::parse("cost $${5}").unwrap(),
            HeaderValue::Static(b"cost ${5}".as_slice().into())
        );
        let v = HeaderValue::parse("${consumer}@${route} via ${jwt.org_id}").unwrap();
        assert_eq!(
            v.variables().cloned().collect::<Vec<_>>(),
            [
                Variable::Consumer,
                Variable::Route,
                Variable::Claim("org_id".into())
            ]
        );
        assert_eq!(v.to_string(), "${consumer}@${route} via ${jwt.org_id}");
        for bad in ["${nope}", "${client_ip", "${jwt.}", "${}"] {
            let err = HeaderValue::parse(bad).unwrap_err();
            assert!(err.contains(bad.trim_end_matches('}')), "{bad}: {err}");
        }
    }

    #[test]
    fn templates_fill_in_the_request_and_never_break_the_head() {
        let claims = [("org".into(), b"acme".as_slice().into())];
        let vars = Vars {
            client_ip: b"192.0.2.7",
            request_id: b"rid-1",
            consumer: b"alice",
            route: b"orders",
            host: Some(b"api.example.com"),
            claims: &claims,
            cert: None,
        };
        let v = HeaderValue::parse(
            "${consumer}@${jwt.org} from ${client_ip} (${request_id}, ${route}, ${host})",
        )
        .unwrap();
        assert_eq!(
            written(&v, &vars),
            "x-h: alice@acme from 192.0.2.7 (rid-1, orders, api.example.com)\r\n"
        );
        // Absent variables come to nothing, and so does the header.
        let absent = HeaderValue::parse("${jwt.missing}${tls.client_subject}").unwrap();
        assert_eq!(written(&absent, &vars), "");
        let trailing = HeaderValue::parse("org ${jwt.missing}").unwrap();
        assert_eq!(written(&trailing, &vars), "x-h: org\r\n");
        let blank = HeaderValue::parse("${jwt.missing} ${consumer}").unwrap();
        assert_eq!(written(&blank, &Vars::default()), "");
        let leading = HeaderValue::parse("${jwt.missing} x ").unwrap();
        assert_eq!(written(&leading, &Vars::default()), "x-h: x\r\n");
        // A value with CR LF cannot add a header.
        let evil = [("org".into(), b"a\r\nx-admin: 1".as_slice().into())];
        let vars = Vars {
            claims: &evil,
            ..vars
        };
        assert_eq!(
            written(&HeaderValue::parse("${jwt.org}").unwrap(), &vars),
            "x-h: ax-admin: 1\r\n"
        );
        assert_eq!(
            written(&HeaderValue::parse("static").unwrap(), &Vars::default()),
            "x-h: static\r\n"
        );
    }
}
