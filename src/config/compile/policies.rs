//! [cold] Validation of the edge policies: `[ip_rules.NAME]` and
//! `[cors.NAME]` (docs/policies.md), and resolving the names listeners and
//! routes give them.

use toml::Spanned;

use super::Errors;
use crate::config::file;
use crate::ipnet::{IpNet, IpSet};
use crate::policy::cors::CorsPolicy;
use crate::policy::ip_access::{IpRule, Order, Refusal};

/// Methods a CORS policy allows when it names none.
const DEFAULT_CORS_METHODS: [&str; 6] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"];

/// The index of the policy `name` refers to, or an error naming the
/// section to define.
pub(super) fn resolve(
    name: &Spanned<String>,
    names: &[&String],
    section: &str,
    errors: &mut Errors,
) -> Option<usize> {
    let found = names.iter().position(|n| *n == name.get_ref());
    if found.is_none() {
        errors.at(
            name,
            format!(
                "unknown {section} `{0}`; define it as [{section}.{0}]",
                name.get_ref()
            ),
        );
    }
    found
}

/// Networks listed inline and in a file (one per line, `#` comments).
fn networks(
    rule: &str,
    list_name: &str,
    inline: &[Spanned<String>],
    file: Option<&Spanned<String>>,
    errors: &mut Errors,
) -> Vec<IpNet> {
    let mut nets = Vec::new();
    for n in inline {
        match IpNet::parse(n.get_ref().trim()) {
            Some(net) => nets.push(net),
            None => errors.at(
                n,
                format!("ip_rules.{rule}: {list_name} entry `{}` is not an address or CIDR network like \"10.0.0.0/8\" or \"2001:db8::/32\"", n.get_ref()),
            ),
        }
    }
    if let Some(path) = file {
        match std::fs::read_to_string(path.get_ref()) {
            Ok(text) => {
                for (line_no, line) in text.lines().enumerate() {
                    let entry = line.split('#').next().unwrap_or("").trim();
                    if entry.is_empty() {
                        continue;
                    }
                    match IpNet::parse(entry) {
                        Some(net) => nets.push(net),
                        None => errors.at(
                            path,
                            format!(
                                "ip_rules.{rule}: {} line {}: `{entry}` is not an address or CIDR network",
                                path.get_ref(),
                                line_no + 1
                            ),
                        ),
                    }
                }
            }
            Err(e) => errors.at(
                path,
                format!("ip_rules.{rule}: cannot read {}: {e}", path.get_ref()),
            ),
        }
    }
    nets
}

pub(super) fn compile_ip_rule(
    name: &str,
    section: &Spanned<file::IpRuleSection>,
    errors: &mut Errors,
) -> IpRule {
    let r = section.get_ref();
    let allow = networks(name, "allow", &r.allow, r.allow_file.as_ref(), errors);
    let deny = networks(name, "deny", &r.deny, r.deny_file.as_ref(), errors);
    if allow.is_empty() && deny.is_empty() && r.default.is_none() {
        errors.at(
            section,
            format!("ip_rules.{name}: needs networks in allow or deny (or allow_file, deny_file)"),
        );
    }
    let order = match r.order.as_ref().map(|o| (o, o.get_ref().as_str())) {
        None | Some((_, "deny-first")) => Order::DenyFirst,
        Some((_, "allow-first")) => Order::AllowFirst,
        Some((o, other)) => {
            errors.at(
                o,
                format!("ip_rules.{name}: order must be \"deny-first\" or \"allow-first\", not `{other}`"),
            );
            Order::DenyFirst
        }
    };
    let admit_unlisted = match r.default.as_ref().map(|d| (d, d.get_ref().as_str())) {
        None => allow.is_empty(),
        Some((_, "allow")) => true,
        Some((_, "deny")) => false,
        Some((d, other)) => {
            errors.at(
                d,
                format!("ip_rules.{name}: default must be \"allow\" or \"deny\", not `{other}`"),
            );
            false
        }
    };
    let refusal = match r.action.as_ref().map(|a| (a, a.get_ref().as_str())) {
        None | Some((_, "forbid")) => Refusal::Forbid,
        Some((_, "close")) => Refusal::Close,
        Some((a, other)) => {
            errors.at(
                a,
                format!(
                    "ip_rules.{name}: action must be \"forbid\" (403) or \"close\", not `{other}`"
                ),
            );
            Refusal::Forbid
        }
    };
    let mut trusted_proxies = Vec::new();
    for t in &r.trusted_proxies {
        match IpNet::parse(t) {
            Some(net) => trusted_proxies.push(net),
            None => errors.at(
                section,
                format!(
                    "ip_rules.{name}: trusted_proxies entry `{t}` is not an address or CIDR network"
                ),
            ),
        }
    }
    IpRule {
        name: name.to_string(),
        allow: IpSet::new(&allow),
        deny: IpSet::new(&deny),
        order,
        admit_unlisted,
        refusal,
        trusted_proxies,
    }
}

/// An origin as a browser sends it: `scheme://host[:port]`, nothing more.
fn is_origin(text: &str) -> bool {
    let Some((scheme, rest)) = text.split_once("://") else {
        return false;
    };
    !scheme.is_empty()
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
        && !rest.is_empty()
        && rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
}

/// `a, b, c` from a list.
fn line(items: &[Box<[u8]>]) -> Box<[u8]> {
    items.join(&b", "[..]).into_boxed_slice()
}

pub(super) fn compile_cors(
    name: &str,
    index: usize,
    section: &Spanned<file::CorsSection>,
    errors: &mut Errors,
) -> CorsPolicy {
    let c = section.get_ref();
    let mut policy = CorsPolicy {
        name: name.to_string(),
        index,
        any_origin: false,
        exact: Box::default(),
        patterns: Box::default(),
        any_method: false,
        methods: Box::default(),
        methods_line: Box::default(),
        any_header: true,
        headers: Box::default(),
        headers_line: Box::default(),
        expose_line: Box::default(),
        credentials: c.credentials,
        max_age: c.max_age.map(|d| d.0.as_secs()),
        private_network: c.private_network,
        forward_preflight: c.forward_preflight,
        allowed_tail: Box::default(),
    };
    if c.origins.is_empty() {
        errors.at(
            section,
            format!("cors.{name}: origins must list at least one origin (or \"*\")"),
        );
    }
    let (mut exact, mut patterns) = (Vec::new(), Vec::new());
    for o in &c.origins {
        let text = o.get_ref().trim_end_matches('/').to_ascii_lowercase();
        if text == "*" {
            policy.any_origin = true;
        } else if let Some((scheme, host)) = text.split_once("://*.") {
            if !is_origin(&format!("{scheme}://{host}")) || host.contains('*') {
                errors.at(
                    o,
                    format!(
                        "cors.{name}: `{}` is not an origin pattern like \"https://*.example.com\"",
                        o.get_ref()
                    ),
                );
            }
            patterns.push((
                format!("{scheme}://").into_bytes().into_boxed_slice(),
                format!(".{host}").into_bytes().into_boxed_slice(),
            ));
        } else if is_origin(&text) {
            exact.push(text.into_bytes().into_boxed_slice());
        } else {
            errors.at(o, format!("cors.{name}: `{}` is not an origin like \"https://app.example.com\" (scheme, host, optional port; no path)", o.get_ref()));
        }
    }
    policy.exact = exact.into_boxed_slice();
    policy.patterns = patterns.into_boxed_slice();

    let methods: Vec<(String, Option<&Spanned<String>>)> = match &c.methods {
        None => DEFAULT_CORS_METHODS
            .iter()
            .map(|m| (m.to_string(), None))
            .collect(),
        Some(list) => list
            .iter()
            .map(|m| (m.get_ref().clone(), Some(m)))
            .collect(),
    };
    let mut allowed = Vec::new();
    for (m, at) in methods {
        if m == "*" {
            policy.any_method = true;
        } else if super::is_token(m.as_bytes()) {
            allowed.push(m.into_bytes().into_boxed_slice());
        } else if let Some(at) = at {
            errors.at(at, format!("cors.{name}: `{m}` is not a method"));
        }
    }
    policy.methods_line = line(&allowed);
    policy.methods = allowed.into_boxed_slice();

    if let Some(list) = &c.headers {
        policy.any_header = list.iter().any(|h| h.get_ref() == "*");
        let mut names = Vec::new();
        for h in list.iter().filter(|h| h.get_ref() != "*") {
            if !super::is_token(h.get_ref().as_bytes()) {
                errors.at(
                    h,
                    format!("cors.{name}: `{}` is not a header name", h.get_ref()),
                );
            }
            names.push(
                h.get_ref()
                    .to_ascii_lowercase()
                    .into_bytes()
                    .into_boxed_slice(),
            );
        }
        policy.headers_line = line(&names);
        policy.headers = names.into_boxed_slice();
    }
    let mut exposed = Vec::new();
    for h in &c.expose_headers {
        if !super::is_token(h.get_ref().as_bytes()) {
            errors.at(
                h,
                format!(
                    "cors.{name}: expose_headers: `{}` is not a header name",
                    h.get_ref()
                ),
            );
        }
        exposed.push(h.get_ref().as_bytes().into());
    }
    policy.expose_line = line(&exposed);
    policy.prepare();
    policy
}

/// Default `tunnel_idle_timeout`: WebSocket clients ping more often than
/// this, and a tunnel nobody uses should not hold two sockets forever.
const DEFAULT_TUNNEL_IDLE: std::time::Duration = std::time::Duration::from_secs(300);

/// A route's `upgrades` and tunnel limits.
pub(super) fn compile_tunnel(
    route: &str,
    r: &file::RouteSection,
    proxies: bool,
    at: &Spanned<file::RouteSection>,
    errors: &mut Errors,
) -> Option<Box<crate::policy::tunnel::TunnelPolicy>> {
    if r.upgrades.is_empty() {
        if r.tunnel_idle_timeout.is_some() || r.tunnel_max_lifetime.is_some() {
            errors.at(
                at,
                format!("route `{route}`: tunnel_idle_timeout and tunnel_max_lifetime need upgrades = [\"websocket\", ...]"),
            );
        }
        return None;
    }
    if !proxies {
        errors.at(
            at,
            format!("route `{route}`: upgrades need a route with an upstream"),
        );
    }
    let mut protocols = Vec::new();
    for p in &r.upgrades {
        let name = p.get_ref().to_ascii_lowercase();
        if name == "h2c" {
            errors.at(p, format!("route `{route}`: h2c cannot be tunnelled (ringgate speaks HTTP/1.1 to upstreams; h2c upgrades are refused)"));
        } else if !super::is_token(name.as_bytes()) {
            errors.at(
                p,
                format!("route `{route}`: `{}` is not a protocol name", p.get_ref()),
            );
        }
        protocols.push(name.into_bytes().into_boxed_slice());
    }
    let idle_timeout = r.tunnel_idle_timeout.map_or(DEFAULT_TUNNEL_IDLE, |d| d.0);
    if idle_timeout.is_zero() {
        errors.at(
            at,
            format!("route `{route}`: tunnel_idle_timeout must be more than 0"),
        );
    }
    let max_lifetime = r.tunnel_max_lifetime.map(|d| d.0);
    if max_lifetime.is_some_and(|d| d.is_zero()) {
        errors.at(at, format!("route `{route}`: tunnel_max_lifetime must be more than 0 (leave it out for no limit)"));
    }
    Some(Box::new(crate::policy::tunnel::TunnelPolicy {
        protocols: protocols.into_boxed_slice(),
        idle_timeout,
        max_lifetime,
    }))
}

/// A route's `compress = { ... }`.
pub(super) fn compile_compress(
    route: &str,
    section: &Spanned<file::CompressSection>,
    errors: &mut Errors,
) -> Option<Box<crate::policy::compress::CompressPolicy>> {
    use crate::policy::compress::{CompressPolicy, DEFAULT_TYPES, Encoding, TypeMatch};
    let c = section.get_ref();
    if !c.enabled {
        return None;
    }
    let mut encodings = Vec::new();
    match &c.encodings {
        None => encodings.extend([Encoding::Brotli, Encoding::Gzip]),
        Some(list) => {
            for e in list {
                match Encoding::parse(e.get_ref()) {
                    Some(enc) if !encodings.contains(&enc) => encodings.push(enc),
                    Some(_) => errors.at(
                        e,
                        format!(
                            "route `{route}` compress: `{}` is listed twice",
                            e.get_ref()
                        ),
                    ),
                    None => errors.at(
                        e,
                        format!(
                            "route `{route}` compress: encodings are \"br\" and \"gzip\", not `{}`",
                            e.get_ref()
                        ),
                    ),
                }
            }
            if list.is_empty() {
                errors.at(section, format!("route `{route}` compress: encodings must name at least one of \"br\", \"gzip\""));
            }
        }
    }
    let names: Vec<(String, Option<&Spanned<String>>)> = match &c.types {
        None => DEFAULT_TYPES
            .iter()
            .map(|t| (t.to_string(), None))
            .collect(),
        Some(list) => list
            .iter()
            .map(|t| (t.get_ref().to_ascii_lowercase(), Some(t)))
            .collect(),
    };
    let mut types = Vec::new();
    for (t, at) in names {
        let valid = t.split_once('/').is_some_and(|(top, sub)| {
            super::is_token(top.as_bytes()) && (sub == "*" || super::is_token(sub.as_bytes()))
        });
        if !valid {
            errors.span(
                at.map(|a| a.span()).or(Some(section.span())),
                format!("route `{route}` compress: `{t}` is not a content type like \"application/json\" or \"text/*\""),
            );
            continue;
        }
        types.push(match t.strip_suffix("/*") {
            Some(top) => TypeMatch::Top(top.as_bytes().into()),
            None => TypeMatch::Exact(t.as_bytes().into()),
        });
    }
    let gzip_level = c.gzip_level.as_ref().map_or(4, |l| *l.get_ref());
    if let Some(l) = &c.gzip_level
        && !(1..=9).contains(l.get_ref())
    {
        errors.at(l, format!("route `{route}` compress: gzip_level is 1-9"));
    }
    let brotli_quality = c.brotli_quality.as_ref().map_or(4, |q| *q.get_ref());
    if let Some(q) = &c.brotli_quality
        && *q.get_ref() > 11
    {
        errors.at(
            q,
            format!("route `{route}` compress: brotli_quality is 0-11"),
        );
    }
    Some(Box::new(CompressPolicy {
        encodings: encodings.into_boxed_slice(),
        types: types.into_boxed_slice(),
        min_size: c.min_size.map_or(1024, |s| s.0),
        gzip_level,
        brotli_quality,
    }))
}
