//! [cold/warm] A listener's TLS as compiled from the config: certificates
//! by name (the SNI table), one rustls `ServerConfig` per client-auth
//! policy, and the per-connection lookups the handshake and the requests
//! after it make.
//!
//! Built on the control thread into the Snapshot, so every worker shares
//! one `Arc<ServerConfig>` per policy per generation: a ticket issued on
//! one core resumes on any other. Names whose client-auth rules differ get
//! different configs (and ticket keys, `tickets`): the SNI picks the
//! config before the handshake starts, and a request naming a server the
//! handshake did not cover is refused (421), so neither resumption nor a
//! mismatched Host can skip client authentication.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ServerConfig, SignatureAlgorithm};

use super::identity::CertFacts;
use super::tickets::{MasterSecret, Tickets};

/// TLS 1.3 tickets sent after a full handshake: one per connection a
/// client may open in parallel right after it (OpenSSL sends two too).
const TICKETS_AFTER_FULL_HANDSHAKE: usize = 2;

/// The longest DNS name (RFC 1035); longer SNI or Host values match nothing.
const MAX_NAME: usize = 253;

/// What a listener's TLS needs at run time.
pub struct ListenerTls {
    sites: Vec<Site>,
    table: Arc<SniTable>,
    /// One per client-auth policy; `Site::policy` indexes it.
    configs: Vec<PolicyConfigs>,
    pub handshake_timeout: Duration,
    pub max_handshakes_in_flight: usize,
    /// Some names need client certificates: each request's Host must be a
    /// name its connection's handshake covered.
    pub checks_host: bool,
    pub expiry_warning: Duration,
}

/// A policy's server configs: the same certificates, verifier and ticket
/// keys, differing only in how many TLS 1.3 tickets a handshake gets
/// (`client_hello`: two after a full handshake, one after a resumption).
struct PolicyConfigs {
    full: Arc<ServerConfig>,
    resuming: Arc<ServerConfig>,
}

impl std::fmt::Debug for ListenerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerTls")
            .field("sites", &self.sites.len())
            .field("policies", &self.configs.len())
            .finish_non_exhaustive()
    }
}

/// The certificates served under one set of names (an ECDSA and an RSA
/// certificate for the same names make one site).
pub struct Site {
    /// Lower-case; `*.example.com` for wildcards.
    pub names: Vec<Box<str>>,
    pub certificates: Vec<ServedCert>,
    policy: usize,
}

/// A certificate file a site serves, and what it says.
pub struct ServedCert {
    pub path: Box<str>,
    pub facts: CertFacts,
}

/// Names to sites. Wildcards cover exactly one label (RFC 6125 §6.4.3).
#[derive(Debug, Default)]
struct SniTable {
    exact: HashMap<Box<str>, usize>,
    /// `example.com` for `*.example.com`.
    wildcard: HashMap<Box<str>, usize>,
    default: Option<usize>,
}

impl SniTable {
    /// The site named `name` (any case), else none.
    fn named(&self, name: &str) -> Option<usize> {
        let mut buf = [0u8; MAX_NAME];
        let lower = lowercase(name.as_bytes(), &mut buf)?;
        if let Some(&site) = self.exact.get(lower) {
            return Some(site);
        }
        let (_, parent) = lower.split_once('.')?;
        self.wildcard.get(parent).copied()
    }

    /// The site a ClientHello with this SNI gets.
    fn lookup(&self, sni: Option<&str>) -> Option<usize> {
        sni.and_then(|name| self.named(name)).or(self.default)
    }
}

/// `name` lower-cased into `buf`, if it fits and is ASCII.
fn lowercase<'b>(name: &[u8], buf: &'b mut [u8; MAX_NAME]) -> Option<&'b str> {
    let out = buf.get_mut(..name.len())?;
    for (o, b) in out.iter_mut().zip(name) {
        *o = b.to_ascii_lowercase();
    }
    std::str::from_utf8(out).ok()
}

#[derive(Debug)]
struct Resolver {
    table: Arc<SniTable>,
    /// Per site, in preference order (ECDSA and EdDSA before RSA: smaller
    /// and cheaper to sign with).
    keys: Vec<Vec<Arc<CertifiedKey>>>,
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let site = self.table.lookup(hello.server_name())?;
        let schemes = hello.signature_schemes();
        self.keys[site]
            .iter()
            .find(|k| k.key.choose_scheme(schemes).is_some())
            .cloned()
    }
}

impl ListenerTls {
    /// The site a ClientHello's SNI selects (`None`: refused).
    pub fn site_for(&self, sni: Option<&str>) -> Option<usize> {
        self.table.lookup(sni)
    }

    /// The server config for a handshake that selected `site`, by whether
    /// the client offers to resume. A refused name still gets one: its
    /// resolver finds no certificate and rustls answers with an alert.
    pub fn config_for(&self, site: Option<usize>, resuming: bool) -> Arc<ServerConfig> {
        let policy = &self.configs[site.map_or(0, |s| self.sites[s].policy)];
        if resuming {
            policy.resuming.clone()
        } else {
            policy.full.clone()
        }
    }

    /// Whether a request's Host (`host[:port]`) names a server the
    /// handshake that chose `site` covered.
    pub fn covers(&self, site: Option<usize>, host: &[u8]) -> bool {
        let Ok(name) = std::str::from_utf8(crate::http::host_without_port(host)) else {
            return false;
        };
        let named = self.table.named(name.trim_end_matches('.'));
        named.is_some() && named == site
    }

    pub fn sites(&self) -> &[Site] {
        &self.sites
    }

    /// Served certificates that expire within `expiry_warning` of
    /// `unix_now` (or already have), with the seconds left.
    pub fn expiring(&self, unix_now: i64) -> impl Iterator<Item = (&ServedCert, i64)> {
        let warn = self.expiry_warning.as_secs() as i64;
        self.sites
            .iter()
            .flat_map(|s| &s.certificates)
            .map(move |c| (c, c.facts.expires_in(unix_now)))
            .filter(move |(_, left)| *left <= warn)
    }
}

/// A config error and where it points.
pub struct TlsConfigError {
    pub span: Option<std::ops::Range<usize>>,
    pub message: String,
}

fn error(span: Option<std::ops::Range<usize>>, message: impl Into<String>) -> TlsConfigError {
    TlsConfigError {
        span,
        message: message.into(),
    }
}

#[derive(Clone, PartialEq, Eq)]
enum ClientAuth {
    None,
    Optional(String),
    Required(String),
}

fn client_auth(
    mode: Option<&toml::Spanned<String>>,
    ca: Option<&toml::Spanned<String>>,
    inherited: &ClientAuth,
) -> Result<ClientAuth, TlsConfigError> {
    let Some(mode) = mode else {
        if let Some(ca) = ca {
            // A CA alone keeps the inherited mode with this bundle.
            return Ok(match inherited {
                ClientAuth::Optional(_) => ClientAuth::Optional(ca.get_ref().clone()),
                ClientAuth::Required(_) => ClientAuth::Required(ca.get_ref().clone()),
                ClientAuth::None => {
                    return Err(error(
                        Some(ca.span()),
                        "client_ca needs client_auth = \"optional\" or \"required\"",
                    ));
                }
            });
        }
        return Ok(inherited.clone());
    };
    let ca_path = || {
        ca.map(|c| c.get_ref().clone())
            .or_else(|| match inherited {
                ClientAuth::Optional(p) | ClientAuth::Required(p) => Some(p.clone()),
                ClientAuth::None => None,
            })
            .ok_or_else(|| {
                error(
                    Some(mode.span()),
                    "client_auth needs client_ca = \"PATH\" (PEM CA certificates)",
                )
            })
    };
    match mode.get_ref().as_str() {
        "none" => Ok(ClientAuth::None),
        "optional" => Ok(ClientAuth::Optional(ca_path()?)),
        "required" => Ok(ClientAuth::Required(ca_path()?)),
        other => Err(error(
            Some(mode.span()),
            format!("client_auth must be \"none\", \"optional\" or \"required\", got `{other}`"),
        )),
    }
}

/// Compiles a listener's `tls` section: reads and checks every file.
pub fn compile(
    section: &crate::config::file::ListenerTlsSection,
) -> Result<ListenerTls, Vec<TlsConfigError>> {
    let mut errors = Vec::new();
    let provider = Arc::new(crate::crypto::provider());

    let min_tls13 = match section
        .min_version
        .as_ref()
        .map(|v| (v.get_ref().as_str(), v))
    {
        None | Some(("1.2", _)) => false,
        Some(("1.3", _)) => true,
        Some((other, v)) => {
            errors.push(error(
                Some(v.span()),
                format!("min_version must be \"1.2\" or \"1.3\", got `{other}`"),
            ));
            false
        }
    };
    let refuse_unknown = match section
        .unknown_sni
        .as_ref()
        .map(|v| (v.get_ref().as_str(), v))
    {
        None | Some(("default", _)) => false,
        Some(("refuse", _)) => true,
        Some((other, v)) => {
            errors.push(error(
                Some(v.span()),
                format!("unknown_sni must be \"default\" or \"refuse\", got `{other}`"),
            ));
            false
        }
    };
    let mut alpn = Vec::new();
    for p in &section.alpn {
        match p.get_ref().as_str() {
            "http/1.1" => alpn.push(b"http/1.1".to_vec()),
            other => errors.push(error(
                Some(p.span()),
                format!("alpn: only \"http/1.1\" is served, got `{other}`"),
            )),
        }
    }
    let listener_auth = client_auth(
        section.client_auth.as_ref(),
        section.client_ca.as_ref(),
        &ClientAuth::None,
    )
    .unwrap_or_else(|e| {
        errors.push(e);
        ClientAuth::None
    });
    if section.certificates.is_empty() {
        errors.push(error(None, "tls needs at least one entry in certificates"));
    }
    if section.max_handshakes_in_flight == 0 {
        errors.push(error(
            None,
            "tls.max_handshakes_in_flight must be at least 1",
        ));
    }
    if section.handshake_timeout.0.is_zero() {
        errors.push(error(
            None,
            "tls.handshake_timeout must be greater than zero",
        ));
    }

    // Sites: entries with the same names (and client auth) share one.
    let mut sites: Vec<Site> = Vec::new();
    let mut site_keys: Vec<Vec<Arc<CertifiedKey>>> = Vec::new();
    let mut site_auth: Vec<ClientAuth> = Vec::new();
    let mut table = SniTable::default();
    for entry in &section.certificates {
        let span = Some(entry.span());
        let entry = entry.get_ref();
        let loaded = match load_certified_key(entry, &provider) {
            Ok(loaded) => loaded,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        let (key, facts) = loaded;
        let names: Vec<Box<str>> = match &entry.names {
            Some(names) => names
                .iter()
                .map(|n| n.get_ref().to_ascii_lowercase().into_boxed_str())
                .collect(),
            None => facts.dns_names.clone(),
        };
        if names.is_empty() {
            errors.push(error(
                span.clone(),
                format!(
                    "`{}` names no DNS host (no subjectAltName dNSName): give names = [...]",
                    entry.cert.get_ref()
                ),
            ));
            continue;
        }
        let auth = match client_auth(
            entry.client_auth.as_ref(),
            entry.client_ca.as_ref(),
            &listener_auth,
        ) {
            Ok(a) => a,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        let existing = sites.iter().position(|s| s.names == names);
        let site = match existing {
            Some(site) if site_auth[site] != auth => {
                errors.push(error(
                    span.clone(),
                    "certificates for the same names must have the same client_auth and client_ca",
                ));
                continue;
            }
            Some(site) => site,
            None => {
                let site = sites.len();
                for name in &names {
                    let (map, key) = match name.strip_prefix("*.") {
                        Some(parent) => (&mut table.wildcard, parent),
                        None => (&mut table.exact, &**name),
                    };
                    if map.insert(key.into(), site).is_some() {
                        errors.push(error(span.clone(),
                            format!("name `{name}` is served by two certificate entries with different names lists"),
                        ));
                    }
                }
                sites.push(Site {
                    names,
                    certificates: Vec::new(),
                    policy: 0,
                });
                site_keys.push(Vec::new());
                site_auth.push(auth);
                site
            }
        };
        if entry.default {
            if table.default.is_some_and(|d| d != site) {
                errors.push(error(
                    span.clone(),
                    "only one certificate entry can be the default",
                ));
            }
            table.default = Some(site);
        }
        let algorithm = key.key.algorithm();
        if site_keys[site]
            .iter()
            .any(|k| k.key.algorithm() == algorithm)
        {
            errors.push(error(
                span.clone(),
                format!("two {algorithm:?} certificates for the same names: keep one"),
            ));
            continue;
        }
        site_keys[site].push(Arc::new(key));
        site_keys[site].sort_by_key(|k| k.key.algorithm() == SignatureAlgorithm::RSA);
        sites[site].certificates.push(ServedCert {
            path: entry.cert.get_ref().as_str().into(),
            facts,
        });
    }
    if !refuse_unknown && table.default.is_none() && !sites.is_empty() {
        table.default = Some(0);
    }
    if refuse_unknown {
        table.default = None;
    }

    // One server config per distinct client-auth policy.
    let master = match &section.ticket_key_file {
        None => super::tickets::process_secret(),
        Some(path) => std::fs::read(path.get_ref())
            .map_err(|e| format!("cannot read: {e}"))
            .and_then(|bytes| MasterSecret::from_file_bytes(&bytes)),
    }
    .map_err(|e| {
        let span = section.ticket_key_file.as_ref().map(|p| p.span());
        errors.push(error(span.clone(), format!("ticket key: {e}")));
    });
    let table = Arc::new(table);
    let resolver = Arc::new(Resolver {
        table: table.clone(),
        keys: site_keys,
    });
    let mut policies: Vec<ClientAuth> = Vec::new();
    let mut configs = Vec::new();
    for (site, auth) in sites.iter_mut().zip(&site_auth) {
        if let Some(p) = policies.iter().position(|p| p == auth) {
            site.policy = p;
            continue;
        }
        site.policy = policies.len();
        policies.push(auth.clone());
        let (verifier, label) = match auth {
            ClientAuth::None => (None, b"client-auth:none".to_vec()),
            ClientAuth::Optional(ca) | ClientAuth::Required(ca) => {
                let required = matches!(auth, ClientAuth::Required(_));
                match client_verifier(ca, required, &provider) {
                    Ok(v) => v,
                    Err(e) => {
                        errors.push(error(None, e));
                        continue;
                    }
                }
            }
        };
        let versions: &[&rustls::SupportedProtocolVersion] = if min_tls13 {
            &[&rustls::version::TLS13]
        } else {
            &[&rustls::version::TLS12, &rustls::version::TLS13]
        };
        let builder = match ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
        {
            Ok(b) => b,
            Err(e) => {
                errors.push(error(None, format!("TLS versions: {e}")));
                continue;
            }
        };
        let builder = match verifier {
            Some(v) => builder.with_client_cert_verifier(v),
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_cert_resolver(resolver.clone());
        config.alpn_protocols = alpn.clone();
        // The record layer after the handshake is ours (`record`).
        config.enable_secret_extraction = true;
        match (&master, section.session_tickets) {
            (Ok(master), true) => {
                config.ticketer =
                    Tickets::new(master.clone(), label, section.ticket_rotation.0.as_secs());
                config.send_tls13_tickets = TICKETS_AFTER_FULL_HANDSHAKE;
            }
            _ => config.send_tls13_tickets = 0,
        }
        let mut resuming = config.clone();
        resuming.send_tls13_tickets = resuming.send_tls13_tickets.min(1);
        configs.push(PolicyConfigs {
            full: Arc::new(config),
            resuming: Arc::new(resuming),
        });
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(ListenerTls {
        sites,
        table,
        checks_host: policies.iter().any(|p| *p != ClientAuth::None),
        configs,
        handshake_timeout: section.handshake_timeout.0,
        max_handshakes_in_flight: section.max_handshakes_in_flight,
        expiry_warning: section.expiry_warning.0,
    })
}

fn load_certified_key(
    entry: &crate::config::file::CertificateEntry,
    provider: &rustls::crypto::CryptoProvider,
) -> Result<(CertifiedKey, CertFacts), TlsConfigError> {
    use rustls::pki_types::PrivateKeyDer;
    use rustls::pki_types::pem::PemObject;
    let cert_path = entry.cert.get_ref();
    let chain = super::pem::read_certs(cert_path)
        .map_err(|e| error(Some(entry.cert.span()), e))?
        .certs;
    let leaf = &chain[0];
    let facts = CertFacts::parse(leaf).map_err(|e| {
        error(
            Some(entry.cert.span()),
            format!("`{cert_path}`: not an X.509 certificate: {e}"),
        )
    })?;
    let key_path = entry.key.get_ref();
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| {
        error(
            Some(entry.key.span()),
            format!("cannot read `{key_path}`: {e}"),
        )
    })?;
    let certified = CertifiedKey::from_der(chain, key, provider).map_err(|e| {
        error(
            Some(entry.key.span()),
            format!("`{key_path}` does not go with `{cert_path}`: {e}"),
        )
    })?;
    Ok((certified, facts))
}

/// The verifier for client certificates chaining to `ca`, and the ticket
/// label of this policy (mode and CA bundle digest: a changed bundle
/// starts a new ticket family).
type Verifier = Arc<dyn rustls::server::danger::ClientCertVerifier>;

fn client_verifier(
    ca: &str,
    required: bool,
    provider: &Arc<rustls::crypto::CryptoProvider>,
) -> Result<(Option<Verifier>, Vec<u8>), String> {
    let (roots, bytes) = super::pem::read_roots(ca).map_err(|e| format!("client_ca: {e}"))?;
    let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
    let builder = if required {
        builder
    } else {
        builder.allow_unauthenticated()
    };
    let verifier = builder
        .build()
        .map_err(|e| format!("client_ca `{ca}`: {e}"))?;
    let digest = crate::crypto::digest::digest(&crate::crypto::digest::SHA256, &bytes);
    let mut label = if required {
        b"client-auth:required:".to_vec()
    } else {
        b"client-auth:optional:".to_vec()
    };
    label.extend_from_slice(digest.as_ref());
    Ok((Some(verifier), label))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> SniTable {
        let mut t = SniTable::default();
        t.exact.insert("api.example.com".into(), 0);
        t.wildcard.insert("example.com".into(), 1);
        t.exact.insert("other.test".into(), 2);
        t
    }

    #[test]
    fn sni_picks_exact_before_wildcard_and_wildcards_cover_one_label() {
        let mut t = table();
        assert_eq!(t.lookup(Some("api.example.com")), Some(0));
        assert_eq!(t.lookup(Some("API.Example.COM")), Some(0));
        assert_eq!(t.lookup(Some("www.example.com")), Some(1));
        assert_eq!(t.lookup(Some("a.b.example.com")), None);
        assert_eq!(t.lookup(Some("example.com")), None);
        assert_eq!(t.lookup(None), None);
        t.default = Some(2);
        assert_eq!(t.lookup(Some("unknown.test")), Some(2));
        assert_eq!(t.lookup(None), Some(2));
        assert_eq!(t.lookup(Some(&"a".repeat(300))), Some(2));
    }

    fn listener() -> ListenerTls {
        ListenerTls {
            sites: Vec::new(),
            table: Arc::new(table()),
            configs: Vec::new(),
            handshake_timeout: Duration::from_secs(1),
            max_handshakes_in_flight: 1,
            checks_host: true,
            expiry_warning: Duration::ZERO,
        }
    }

    /// Compiles a listener with a plain name and a client-auth name, from
    /// certificates made here.
    fn two_policies() -> ListenerTls {
        let dir = std::env::temp_dir().join(format!("ringgate-listener-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        let mut entries = Vec::new();
        for name in ["open.test", "secure.test"] {
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = rcgen::CertificateParams::new(vec![name.to_string()])
                .unwrap()
                .signed_by(&key, &ca)
                .unwrap();
            std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
            std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
            let auth = if name == "secure.test" {
                format!(
                    ", client_auth = \"required\", client_ca = \"{}\"",
                    dir.join("ca.pem").display()
                )
            } else {
                String::new()
            };
            entries.push(format!(
                "{{ cert = \"{}\", key = \"{}\"{auth} }}",
                dir.join(format!("{name}.pem")).display(),
                dir.join(format!("{name}.key")).display()
            ));
        }
        let text = format!("certificates = [{}]", entries.join(", "));
        let section: crate::config::file::ListenerTlsSection = toml::from_str(&text).unwrap();
        let compiled = compile(&section);
        std::fs::remove_dir_all(&dir).unwrap();
        compiled.unwrap_or_else(|e| panic!("{}", e[0].message))
    }

    #[test]
    fn names_with_different_client_auth_get_configs_whose_tickets_do_not_cross() {
        let tls = two_policies();
        assert!(tls.checks_host);
        let open = tls.site_for(Some("open.test"));
        let secure = tls.site_for(Some("secure.test"));
        let (a, b) = (tls.config_for(open, false), tls.config_for(secure, false));
        assert!(!Arc::ptr_eq(&a, &b));
        // Resumptions get one ticket, full handshakes two, under the
        // same ticket keys.
        let (a1, b1) = (tls.config_for(open, true), tls.config_for(secure, true));
        assert_eq!((a.send_tls13_tickets, a1.send_tls13_tickets), (2, 1));
        assert_eq!((b.send_tls13_tickets, b1.send_tls13_tickets), (2, 1));
        assert!(Arc::ptr_eq(&a.ticketer, &a1.ticketer));
        assert!(Arc::ptr_eq(&b.ticketer, &b1.ticketer));
        assert!(!Arc::ptr_eq(&a.ticketer, &b1.ticketer));
        let ticket = a.ticketer.encrypt(b"session").unwrap();
        assert_eq!(a.ticketer.decrypt(&ticket).unwrap(), b"session");
        assert!(
            b.ticketer.decrypt(&ticket).is_none(),
            "a plain ticket opened under client auth"
        );
        let back = b.ticketer.encrypt(b"authenticated").unwrap();
        assert!(a.ticketer.decrypt(&back).is_none());
        // Unknown names get the first certificate's site, and its config.
        assert_eq!(tls.site_for(Some("elsewhere.test")), open);
        assert!(Arc::ptr_eq(&tls.config_for(tls.site_for(None), false), &a));
    }

    #[test]
    fn a_host_is_covered_only_by_the_site_its_handshake_chose() {
        let l = listener();
        assert!(l.covers(Some(0), b"api.example.com"));
        assert!(l.covers(Some(0), b"API.example.com:8443"));
        assert!(l.covers(Some(0), b"api.example.com."));
        assert!(l.covers(Some(1), b"www.example.com"));
        assert!(!l.covers(Some(1), b"api.example.com"));
        assert!(!l.covers(Some(0), b"www.example.com"));
        assert!(!l.covers(Some(2), b"unknown.test"));
        assert!(!l.covers(None, b"unknown.test"));
        assert!(!l.covers(Some(0), b"[::1]:8443"));
        assert!(!l.covers(Some(0), b"\xff"));
    }
}
