//! [cold] Validation of aggregate routes (`[routes.aggregate]`,
//! docs/policies.md): backends, their path templates and limits.

use std::time::Duration;

use toml::Spanned;

use super::Errors;
use crate::config::file;
use crate::policy::aggregate::{AggregatePolicy, Backend, OnFailure, Pattern, parse_path};

const DEFAULT_DEADLINE: Duration = Duration::from_secs(5);
const DEFAULT_MAX_BODY: u64 = 256 * 1024;
const DEFAULT_MAX_RESULT: u64 = 1024 * 1024;
/// Bodies are held whole to be merged: bounded.
const MAX_BODY_LIMIT: u64 = 16 * 1024 * 1024;
const MAX_BACKENDS: usize = 16;

pub(super) fn compile_aggregate(
    route: &str,
    section: &Spanned<file::AggregateSection>,
    upstream_names: &[&String],
    prefix_len: usize,
    errors: &mut Errors,
) -> Option<AggregatePolicy> {
    let a = section.get_ref();
    let before = errors.list.len();
    let pattern = a.pattern.as_ref().and_then(|p| {
        let parsed = Pattern::parse(p.get_ref());
        if parsed.is_none() {
            errors.at(
                p,
                format!("route `{route}` aggregate: pattern must look like \"/users/{{id}}/overview\" (segments, `{{name}}` parameters of letters, digits and _)"),
            );
        }
        parsed
    });
    let names: &[Box<str>] = pattern.as_ref().map_or(&[], |p| &p.names);
    if a.backends.is_empty() || a.backends.len() > MAX_BACKENDS {
        errors.at(
            section,
            format!("route `{route}` aggregate: between 1 and {MAX_BACKENDS} [[routes.aggregate.backends]]"),
        );
    }
    let deadline = a.deadline.map_or(DEFAULT_DEADLINE, |d| d.0);
    if deadline.is_zero() {
        errors.at(
            section,
            format!("route `{route}` aggregate: deadline must be more than 0"),
        );
    }
    let on_failure = match a.on_failure.as_ref().map(|o| (o, o.get_ref().as_str())) {
        None | Some((_, "fail")) => OnFailure::Fail,
        Some((_, "partial")) => OnFailure::Partial,
        Some((o, other)) => {
            errors.at(o, format!("route `{route}` aggregate: on_failure is \"fail\" or \"partial\", not `{other}`"));
            OnFailure::Fail
        }
    };
    let mut pass_headers = Vec::new();
    for h in &a.headers {
        let lower = h.get_ref().to_ascii_lowercase();
        if !super::is_token(lower.as_bytes()) {
            errors.at(
                h,
                format!(
                    "route `{route}` aggregate: `{}` is not a header name",
                    h.get_ref()
                ),
            );
        } else if crate::http::is_hop_by_hop_or_framing(lower.as_bytes()) || lower == "host" {
            errors.at(
                h,
                format!(
                    "route `{route}` aggregate: `{}` is the gateway's to write",
                    h.get_ref()
                ),
            );
        }
        pass_headers.push(lower.into_bytes().into_boxed_slice());
    }
    let mut backends = Vec::new();
    let mut seen: Vec<String> = Vec::new();
    for b in &a.backends {
        let spec = b.get_ref();
        let Some(upstream) = upstream_names
            .iter()
            .position(|n| *n == spec.upstream.get_ref())
        else {
            errors.at(
                &spec.upstream,
                format!(
                    "route `{route}` aggregate: unknown upstream `{}`",
                    spec.upstream.get_ref()
                ),
            );
            continue;
        };
        let name = spec
            .name
            .clone()
            .unwrap_or_else(|| spec.upstream.get_ref().clone());
        if seen.contains(&name) {
            errors.at(b, format!("route `{route}` aggregate: two backends are named `{name}`; give them `name = \"...\"`"));
        }
        seen.push(name.clone());
        let path = match parse_path(spec.path.get_ref(), names) {
            Ok(p) => p,
            Err(e) => {
                errors.at(&spec.path, format!("route `{route}` aggregate: path {e}"));
                continue;
            }
        };
        if spec.path.get_ref().bytes().any(|b| b <= b' ' || b == 0x7f) {
            errors.at(
                &spec.path,
                format!("route `{route}` aggregate: path has spaces or control characters"),
            );
        }
        let max_body = spec.max_body.map_or(DEFAULT_MAX_BODY, |m| m.0);
        if max_body == 0 || max_body > MAX_BODY_LIMIT {
            errors.at(
                b,
                format!("route `{route}` aggregate: max_body must be between 1 byte and 16MiB"),
            );
        }
        let timeout = spec.timeout.map_or(deadline, |t| t.0);
        if timeout.is_zero() {
            errors.at(
                b,
                format!("route `{route}` aggregate: timeout must be more than 0"),
            );
        }
        backends.push(Backend {
            name: name.into(),
            upstream,
            path,
            key: spec.key.as_deref().map(Into::into),
            allow: spec
                .allow
                .as_ref()
                .map(|list| list.iter().map(|f| f.as_str().into()).collect()),
            deny: spec.deny.iter().map(|f| f.as_str().into()).collect(),
            timeout: timeout.min(deadline),
            max_body: max_body as usize,
        });
    }
    let max_result = a.max_result.map_or(DEFAULT_MAX_RESULT, |m| m.0);
    if max_result == 0 || max_result > MAX_BODY_LIMIT {
        errors.at(
            section,
            format!("route `{route}` aggregate: max_result must be between 1 byte and 16MiB"),
        );
    }
    if errors.list.len() != before {
        return None;
    }
    Some(AggregatePolicy {
        backends: backends.into_boxed_slice(),
        deadline,
        on_failure,
        max_result: max_result as usize,
        pass_headers: pass_headers.into_boxed_slice(),
        pattern,
        prefix_len,
    })
}
