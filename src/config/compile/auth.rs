//! [cold] `[auth.NAME]` sections and routes' `auth` settings compiled:
//! API keys, JWT (keys, JWKS file or URL, claim rules) and token
//! introspection providers, with the headers each hides from upstreams.

use toml::Spanned;

use super::{Errors, file, is_token};

/// Compiles an `[auth.NAME]` section, reading the files it names.
pub(super) fn compile_auth(
    name: &str,
    section: &Spanned<file::AuthSection>,
    upstreams: &[crate::snapshot::UpstreamSpec],
    template_claims: &[String],
    errors: &mut Errors,
) -> Option<crate::auth::Provider> {
    use crate::auth::api_key::{ApiKeys, KeyLocation};
    let a = section.get_ref();
    match a.kind.get_ref().as_str() {
        "api_key" => {
            let Some(file) = &a.keys_file else {
                errors.at(
                    section,
                    format!("auth.{name}: type = \"api_key\" needs keys_file = \"PATH\""),
                );
                return None;
            };
            let mut header = None;
            if let Some(h) = &a.header {
                if !is_token(h.get_ref().as_bytes()) {
                    errors.at(h, format!("auth.{name}: header must be a header name"));
                    return None;
                }
                header = Some(h.get_ref().to_ascii_lowercase().into_bytes().into());
            }
            let mut query = None;
            if let Some(q) = &a.query {
                if q.get_ref().is_empty()
                    || !q
                        .get_ref()
                        .bytes()
                        .all(|b| b.is_ascii_graphic() && b != b'&' && b != b'=')
                {
                    errors.at(
                        q,
                        format!("auth.{name}: query must be a query parameter name"),
                    );
                    return None;
                }
                query = Some(q.get_ref().as_bytes().into());
            }
            if header.is_none() && query.is_none() {
                header = Some(b"x-api-key"[..].into());
            }
            let text = match std::fs::read_to_string(file.get_ref()) {
                Ok(t) => t,
                Err(e) => {
                    errors.at(
                        file,
                        format!("auth.{name}: cannot read {}: {e}", file.get_ref()),
                    );
                    return None;
                }
            };
            match ApiKeys::parse(&text, KeyLocation { header, query }, file.get_ref()) {
                Ok(keys) => Some(provider(
                    name,
                    crate::auth::ProviderKind::ApiKey(keys),
                    a.forward_credential,
                )),
                Err(e) => {
                    errors.at(file, format!("auth.{name}: {e}"));
                    None
                }
            }
        }
        "jwt" => compile_jwt(name, section, upstreams, template_claims, errors).map(|jwt| {
            provider(
                name,
                crate::auth::ProviderKind::Jwt(jwt),
                a.forward_credential,
            )
        }),
        "introspection" => compile_introspection(name, section, upstreams, template_claims, errors)
            .map(|i| {
                provider(
                    name,
                    crate::auth::ProviderKind::Introspection(Box::new(i)),
                    a.forward_credential,
                )
            }),
        other => {
            errors.at(
                &a.kind,
                format!("auth.{name}: unknown type `{other}`; expected \"api_key\", \"jwt\" or \"introspection\""),
            );
            None
        }
    }
}

/// A provider with the headers its routes hide from the upstream.
fn provider(
    name: &str,
    kind: crate::auth::ProviderKind,
    forward_credential: bool,
) -> crate::auth::Provider {
    let mut hidden_headers: Vec<Box<[u8]>> = match &kind {
        crate::auth::ProviderKind::Jwt(jwt) => {
            jwt.provider.claim_headers().map(Into::into).collect()
        }
        crate::auth::ProviderKind::Introspection(i) => i
            .rules
            .claim_headers
            .iter()
            .map(|(_, h)| h.clone())
            .collect(),
        crate::auth::ProviderKind::ApiKey(_) => Vec::new(),
    };
    if !forward_credential {
        hidden_headers.extend(crate::auth::credential_header(&kind));
    }
    crate::auth::Provider {
        name: name.to_string(),
        kind,
        hidden_headers,
    }
}

/// A `type = "jwt"` provider: its keys (files and environment read now)
/// and claim rules.
fn compile_jwt(
    name: &str,
    section: &Spanned<file::AuthSection>,
    upstreams: &[crate::snapshot::UpstreamSpec],
    template_claims: &[String],
    errors: &mut Errors,
) -> Option<crate::auth::jwt::JwtCompiled> {
    use crate::auth::jwt::JwtProvider;
    use jsonwebtoken::{Algorithm, DecodingKey};
    let a = section.get_ref();
    let before = errors.list.len();
    let location = token_location(name, section, errors);
    let mut keys: Vec<(Option<String>, Algorithm, DecodingKey)> = Vec::new();
    for k in &a.keys {
        let key = k.get_ref();
        let Ok(alg) = key.alg.get_ref().parse::<Algorithm>() else {
            errors.at(&key.alg, format!("auth.{name}: alg must be one of HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA"));
            continue;
        };
        let hmac = matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512);
        let decoding = match (&key.pem_file, &key.secret_file, &key.secret_env) {
            (Some(pem), None, None) if !hmac => {
                let bytes = match std::fs::read(pem.get_ref()) {
                    Ok(b) => b,
                    Err(e) => {
                        errors.at(
                            pem,
                            format!("auth.{name}: cannot read {}: {e}", pem.get_ref()),
                        );
                        continue;
                    }
                };
                let parsed = match alg {
                    Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(&bytes),
                    Algorithm::EdDSA => DecodingKey::from_ed_pem(&bytes),
                    _ => DecodingKey::from_rsa_pem(&bytes),
                };
                match parsed {
                    Ok(k) => k,
                    Err(e) => {
                        errors.at(
                            pem,
                            format!(
                                "auth.{name}: {} is not a {} public key: {e}",
                                pem.get_ref(),
                                key.alg.get_ref()
                            ),
                        );
                        continue;
                    }
                }
            }
            (None, file, env) if hmac && (file.is_some() != env.is_some()) => {
                let secret = match (file, env) {
                    (Some(f), _) => std::fs::read(f.get_ref())
                        .map_err(|e| (f, format!("cannot read {}: {e}", f.get_ref()))),
                    (_, Some(v)) => {
                        std::env::var(v.get_ref())
                            .map(String::into_bytes)
                            .map_err(|_| {
                                (
                                    v,
                                    format!("environment variable {} is not set", v.get_ref()),
                                )
                            })
                    }
                    _ => continue,
                };
                let mut secret = match secret {
                    Ok(s) => s,
                    Err((at, why)) => {
                        errors.at(at, format!("auth.{name}: {why}"));
                        continue;
                    }
                };
                while secret.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                    secret.pop();
                }
                if secret.len() < 32 {
                    errors.at(
                        k,
                        format!("auth.{name}: an HMAC secret needs at least 32 bytes"),
                    );
                    continue;
                }
                match DecodingKey::from_secret(&secret) {
                    Ok(k) => k,
                    Err(e) => {
                        errors.at(k, format!("auth.{name}: {e}"));
                        continue;
                    }
                }
            }
            _ => {
                errors.at(k, format!("auth.{name}: a key needs pem_file (RS*, PS*, ES*, EdDSA) or one of secret_file / secret_env (HS*)"));
                continue;
            }
        };
        keys.push((key.kid.clone(), alg, decoding));
    }
    if let Some(jwks) = &a.jwks_file {
        match std::fs::read_to_string(jwks.get_ref()) {
            Ok(text) => match crate::auth::jwt::jwks_keys(&text) {
                Ok(more) => keys.extend(more),
                Err(e) => errors.at(jwks, format!("auth.{name}: {}: {e}", jwks.get_ref())),
            },
            Err(e) => errors.at(
                jwks,
                format!("auth.{name}: cannot read {}: {e}", jwks.get_ref()),
            ),
        }
    }
    let jwks = compile_jwks_source(name, section, upstreams, errors);
    if keys.is_empty() && jwks.is_none() && errors.list.len() == before {
        errors.at(
            section,
            format!("auth.{name}: type = \"jwt\" needs keys = [...], jwks_file or jwks_upstream"),
        );
    }
    check_token_provider_fields(name, section, errors);
    if errors.list.len() != before {
        return None;
    }
    let rules = claim_rules(a, &["sub"], &["exp"], template_claims);
    Some(crate::auth::jwt::JwtCompiled {
        provider: JwtProvider::new(location, keys, rules),
        cache_ttl: a
            .cache_ttl
            .map_or(std::time::Duration::from_secs(300), |t| t.0),
        cache_size: a.cache_size.unwrap_or(10_000).max(1),
        jwks: jwks.map(Box::new),
    })
}

/// A JWT provider's `jwks_upstream` and the settings that go with it.
fn compile_jwks_source(
    name: &str,
    section: &Spanned<file::AuthSection>,
    upstreams: &[crate::snapshot::UpstreamSpec],
    errors: &mut Errors,
) -> Option<crate::auth::jwks::JwksSource> {
    use crate::auth::jwks::JwksSource;
    let a = section.get_ref();
    let Some(upstream_name) = &a.jwks_upstream else {
        for (field, set) in [
            ("jwks_path", a.jwks_path.is_some()),
            ("jwks_refresh", a.jwks_refresh.is_some()),
            ("jwks_min_refetch", a.jwks_min_refetch.is_some()),
            ("jwks_startup_wait", a.jwks_startup_wait.is_some()),
        ] {
            if set {
                errors.at(section, format!("auth.{name}: {field} needs jwks_upstream"));
            }
        }
        return None;
    };
    let Some(upstream) = upstreams
        .iter()
        .find(|u| u.name == *upstream_name.get_ref())
    else {
        errors.at(
            upstream_name,
            format!(
                "auth.{name}: jwks_upstream `{}` is not an [upstreams] entry",
                upstream_name.get_ref()
            ),
        );
        return None;
    };
    let path = a
        .jwks_path
        .as_ref()
        .map_or("/.well-known/jwks.json", |p| p.get_ref().as_str());
    if !path.starts_with('/') || !path.bytes().all(|b| b.is_ascii_graphic()) {
        if let Some(p) = &a.jwks_path {
            errors.at(
                p,
                format!(
                    "auth.{name}: jwks_path must be an absolute path (\"/...\") without spaces"
                ),
            );
        }
        return None;
    }
    let refresh = a
        .jwks_refresh
        .map_or(std::time::Duration::from_secs(300), |d| d.0);
    let min_refetch = a
        .jwks_min_refetch
        .map_or(std::time::Duration::from_secs(30), |d| d.0);
    if refresh.is_zero() || min_refetch > refresh {
        errors.at(
            section,
            format!("auth.{name}: jwks_refresh must be above 0s and at least jwks_min_refetch"),
        );
        return None;
    }
    Some(JwksSource {
        provider: name.into(),
        origin: JwksSource::origin_of(upstream, path),
        upstream: upstream.clone(),
        path: path.to_string(),
        refresh,
        min_refetch,
        startup_wait: a
            .jwks_startup_wait
            .map_or(std::time::Duration::from_secs(10), |d| d.0),
    })
}

/// A route's `auth`, `auth_mode` and `auth_optional`.
pub(super) fn compile_route_auth(
    r: &file::RouteSection,
    auth_names: &[&String],
    compiled: &[crate::auth::Provider],
    errors: &mut Errors,
) -> Option<crate::snapshot::RouteAuth> {
    let all = match r.auth_mode.as_ref().map(|m| (m, m.get_ref().as_str())) {
        None | Some((_, "any")) => false,
        Some((_, "all")) => true,
        Some((m, _)) => {
            errors.at(m, "auth_mode must be \"any\" or \"all\"");
            false
        }
    };
    if r.auth.is_empty() {
        if let Some(m) = &r.auth_mode {
            errors.at(m, "auth_mode needs auth = [\"PROVIDER\", ...]");
        }
        return None;
    }
    let mut providers = Vec::new();
    for p in &r.auth {
        match auth_names.iter().position(|n| *n == p.get_ref()) {
            Some(i) => providers.push(i as u16),
            None => errors.at(
                p,
                format!(
                    "unknown auth provider `{}`; define it as [auth.{}]",
                    p.get_ref(),
                    p.get_ref()
                ),
            ),
        }
    }
    let mut hidden_headers: Vec<Box<[u8]>> = providers
        .iter()
        .filter_map(|&i| compiled.get(usize::from(i)))
        .flat_map(|p| p.hidden_headers.iter().cloned())
        .collect();
    hidden_headers.sort();
    hidden_headers.dedup();
    Some(crate::snapshot::RouteAuth {
        providers,
        all,
        optional: r.auth_optional,
        scopes: r.auth_scopes.iter().map(|s| s.as_str().into()).collect(),
        hidden_headers: hidden_headers.into(),
        skip_preflight: r.auth_skip_preflight,
    })
}

/// Where a token provider (JWT, introspection) finds the token.
fn token_location(
    name: &str,
    section: &Spanned<file::AuthSection>,
    errors: &mut Errors,
) -> crate::auth::jwt::TokenLocation {
    use crate::auth::jwt::TokenLocation;
    let a = section.get_ref();
    match a.token.as_ref().map(|t| (t, t.get_ref().as_str())) {
        None | Some((_, "bearer")) => TokenLocation::Bearer,
        Some((t, spec)) => {
            let (kind, what) = spec.split_once(':').unwrap_or((spec, ""));
            match kind {
                "header" if is_token(what.as_bytes()) => {
                    TokenLocation::Header(what.to_ascii_lowercase().into_bytes().into())
                }
                "query" if !what.is_empty() => TokenLocation::Query(what.as_bytes().into()),
                "cookie" if is_token(what.as_bytes()) => {
                    TokenLocation::Cookie(what.as_bytes().into())
                }
                _ => {
                    errors.at(t, format!("auth.{name}: token must be \"bearer\", \"header:NAME\", \"query:NAME\" or \"cookie:NAME\""));
                    TokenLocation::Bearer
                }
            }
        }
    }
}

/// Fields a token provider must not have, and its claim headers' names.
fn check_token_provider_fields(
    name: &str,
    section: &Spanned<file::AuthSection>,
    errors: &mut Errors,
) {
    let a = section.get_ref();
    for (field, set) in [
        ("keys_file", a.keys_file.is_some()),
        ("header", a.header.is_some()),
        ("query", a.query.is_some()),
    ] {
        if set {
            errors.at(
                section,
                format!("auth.{name}: {field} is for type = \"api_key\"; use token = \"...\""),
            );
        }
    }
    for header in a.claims_to_headers.values() {
        if !is_token(header.as_bytes()) {
            errors.at(
                section,
                format!("auth.{name}: claims_to_headers: `{header}` is not a header name"),
            );
        }
    }
}

/// The claim rules of a token provider; `consumers` and `required` are
/// the defaults for `consumer_claim` and `required_claims`.
fn claim_rules(
    a: &file::AuthSection,
    consumers: &[&str],
    required: &[&str],
    template_claims: &[String],
) -> crate::auth::jwt::ClaimRules {
    let owned = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    crate::auth::jwt::ClaimRules {
        issuers: a.issuers.clone(),
        audiences: a.audiences.clone(),
        leeway: a.leeway.map_or(30, |l| l.0.as_secs()),
        max_lifetime: a.max_lifetime.map(|m| m.0.as_secs()),
        required: a.required_claims.clone().unwrap_or_else(|| owned(required)),
        consumer_claims: a
            .consumer_claim
            .clone()
            .map_or_else(|| owned(consumers), |c| vec![c]),
        tier_claim: a.tier_claim.clone(),
        scope_claim: a.scope_claim.clone().unwrap_or_else(|| "scope".into()),
        claim_headers: a
            .claims_to_headers
            .iter()
            .map(|(claim, header)| {
                (
                    claim.clone(),
                    header.to_ascii_lowercase().into_bytes().into_boxed_slice(),
                )
            })
            .collect(),
        template_claims: template_claims.to_vec(),
    }
}

/// A `type = "introspection"` provider: the endpoint (an upstream and a
/// path), the client credentials (the secret read now), claim rules and
/// caching.
fn compile_introspection(
    name: &str,
    section: &Spanned<file::AuthSection>,
    upstreams: &[crate::snapshot::UpstreamSpec],
    template_claims: &[String],
    errors: &mut Errors,
) -> Option<crate::auth::introspection::Introspection> {
    let a = section.get_ref();
    let before = errors.list.len();
    let location = token_location(name, section, errors);
    check_token_provider_fields(name, section, errors);
    for (field, set) in [
        ("keys", !a.keys.is_empty()),
        ("jwks_file", a.jwks_file.is_some()),
        ("jwks_upstream", a.jwks_upstream.is_some()),
    ] {
        if set {
            errors.at(
                section,
                format!("auth.{name}: {field} is for type = \"jwt\""),
            );
        }
    }
    let upstream = match &a.introspection_upstream {
        None => {
            errors.at(
                section,
                format!("auth.{name}: type = \"introspection\" needs introspection_upstream = \"UPSTREAM\""),
            );
            None
        }
        Some(u) => {
            let found = upstreams.iter().position(|x| x.name == *u.get_ref());
            if found.is_none() {
                errors.at(
                    u,
                    format!(
                        "auth.{name}: introspection_upstream `{}` is not an [upstreams] entry",
                        u.get_ref()
                    ),
                );
            }
            found
        }
    };
    let path = a
        .introspection_path
        .as_ref()
        .map_or("/introspect", |p| p.get_ref().as_str());
    if (!path.starts_with('/') || !path.bytes().all(|b| b.is_ascii_graphic()))
        && let Some(p) = &a.introspection_path
    {
        errors.at(
            p,
            format!(
                "auth.{name}: introspection_path must be an absolute path (\"/...\") without spaces"
            ),
        );
    }
    let Some(client_id) = &a.client_id else {
        errors.at(
            section,
            format!("auth.{name}: type = \"introspection\" needs client_id (and client_secret_file or client_secret_env)"),
        );
        return None;
    };
    let secret = match (&a.client_secret_file, &a.client_secret_env) {
        (Some(f), None) => std::fs::read(f.get_ref())
            .map(|mut s| {
                while s.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                    s.pop();
                }
                s
            })
            .map_err(|e| (f, format!("cannot read {}: {e}", f.get_ref()))),
        (None, Some(v)) => std::env::var(v.get_ref())
            .map(String::into_bytes)
            .map_err(|_| {
                (
                    v,
                    format!("environment variable {} is not set", v.get_ref()),
                )
            }),
        _ => {
            errors.at(
                section,
                format!("auth.{name}: set one of client_secret_file, client_secret_env"),
            );
            return None;
        }
    };
    let secret = match secret {
        Ok(s) => s,
        Err((at, why)) => {
            errors.at(at, format!("auth.{name}: {why}"));
            return None;
        }
    };
    if errors.list.len() != before {
        return None;
    }
    Some(crate::auth::introspection::Introspection::new(
        location,
        upstream?,
        path,
        client_id,
        &secret,
        claim_rules(a, &["sub", "client_id"], &[], template_claims),
        a.cache_ttl
            .map_or(std::time::Duration::from_secs(60), |t| t.0),
        a.negative_cache_ttl
            .map_or(std::time::Duration::from_secs(10), |t| t.0),
        a.grace.map_or(std::time::Duration::ZERO, |t| t.0),
        a.cache_size.unwrap_or(10_000).max(1),
    ))
}

#[cfg(test)]
mod tests {
    use crate::config::load_str;

    const BASE: &str = r#"
workers = 1
[[listeners]]
bind = "127.0.0.1:0"
[upstreams.idp]
endpoints = ["127.0.0.1:9000"]
[[routes]]
path_prefix = "/"
upstream = "idp"
"#;

    fn errors_of(extra: &str) -> Vec<String> {
        match load_str(&format!("{BASE}{extra}"), "t.toml") {
            Ok(_) => vec![],
            Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
        }
    }

    fn secret_file() -> String {
        let path =
            std::env::temp_dir().join(format!("ringgate-auth-compile-{}", std::process::id()));
        std::fs::write(&path, "a-client-secret\n").unwrap();
        path.display().to_string()
    }

    #[test]
    fn a_jwks_source_needs_a_known_upstream_and_sane_intervals() {
        assert_eq!(
            errors_of("[auth.u]\ntype = \"jwt\"\njwks_upstream = \"idp\"\n"),
            Vec::<String>::new()
        );
        let errs = errors_of("[auth.u]\ntype = \"jwt\"\njwks_upstream = \"nope\"\n");
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].contains("jwks_upstream `nope` is not an [upstreams] entry"));
        let errs = errors_of(
            "[auth.u]\ntype = \"jwt\"\njwks_upstream = \"idp\"\njwks_refresh = \"10s\"\njwks_min_refetch = \"1m\"\n",
        );
        assert!(errs[0].contains("at least jwks_min_refetch"), "{errs:?}");
        let errs = errors_of(
            "[auth.u]\ntype = \"jwt\"\njwks_upstream = \"idp\"\njwks_path = \"keys.json\"\n",
        );
        assert!(
            errs[0].contains("jwks_path must be an absolute path"),
            "{errs:?}"
        );
        let errs = errors_of(
            "[auth.u]\ntype = \"jwt\"\nkeys = [{ alg = \"HS256\", secret_env = \"NOPE_NOT_SET\" }]\njwks_refresh = \"1m\"\n",
        );
        assert!(
            errs.iter()
                .any(|e| e.contains("jwks_refresh needs jwks_upstream")),
            "{errs:?}"
        );
        let errs = errors_of("[auth.u]\ntype = \"jwt\"\n");
        assert!(errs[0].contains("needs keys = [...], jwks_file or jwks_upstream"));
    }

    #[test]
    fn an_introspection_provider_needs_its_endpoint_and_credentials() {
        let file = secret_file();
        let ok = format!(
            "[auth.o]\ntype = \"introspection\"\nintrospection_upstream = \"idp\"\nclient_id = \"gw\"\nclient_secret_file = \"{file}\"\n"
        );
        assert_eq!(errors_of(&ok), Vec::<String>::new());
        let errs = errors_of("[auth.o]\ntype = \"introspection\"\nclient_id = \"gw\"\n");
        assert!(
            errs.iter()
                .any(|e| e.contains("needs introspection_upstream")),
            "{errs:?}"
        );
        assert!(
            errs.iter()
                .any(|e| e.contains("set one of client_secret_file, client_secret_env")),
            "{errs:?}"
        );
        let errs = errors_of(&format!(
            "[auth.o]\ntype = \"introspection\"\nintrospection_upstream = \"nope\"\nclient_secret_file = \"{file}\"\n"
        ));
        assert!(
            errs.iter()
                .any(|e| e.contains("`nope` is not an [upstreams] entry"))
        );
        assert!(errs.iter().any(|e| e.contains("needs client_id")));
        let errs = errors_of(&format!(
            "{ok}jwks_upstream = \"idp\"\nintrospection_path = \"x y\"\n"
        ));
        assert!(
            errs.iter()
                .any(|e| e.contains("jwks_upstream is for type = \"jwt\""))
        );
        assert!(
            errs.iter()
                .any(|e| e.contains("introspection_path must be an absolute path"))
        );
        let errs = errors_of(
            "[auth.o]\ntype = \"introspection\"\nintrospection_upstream = \"idp\"\nclient_id = \"gw\"\nclient_secret_env = \"RINGGATE_SURELY_UNSET\"\n",
        );
        assert!(errs[0].contains("environment variable RINGGATE_SURELY_UNSET is not set"));
        let errs = errors_of("[auth.o]\ntype = \"oauth\"\n");
        assert!(errs[0].contains("expected \"api_key\", \"jwt\" or \"introspection\""));
    }

    #[test]
    fn top_consumers_is_bounded() {
        assert!(errors_of("[admin]\nbind = \"127.0.0.1:0\"\ntop_consumers = 1000\n").is_empty());
        let errs = errors_of("[admin]\nbind = \"127.0.0.1:0\"\ntop_consumers = 1001\n");
        assert!(
            errs[0].contains("admin.top_consumers must be at most 1000"),
            "{errs:?}"
        );
    }
}
