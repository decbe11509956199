//! [cold/warm] TLS toward an upstream as compiled from the config: one
//! rustls `ClientConfig` (shared by every worker, so a session one worker
//! made resumes on any other) and the name each endpoint is verified
//! against. Verification is on unless the config turns it off, against the
//! system's trust store or a CA file.

use std::sync::Arc;

use rustls::ClientConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use super::listener::TlsConfigError;
use crate::config::file::UpstreamTlsSection;

/// An upstream's TLS settings, compiled.
pub struct UpstreamTls {
    pub config: Arc<ClientConfig>,
    /// Per endpoint source (`UpstreamSpec::sources`), in the upstream's
    /// order: SNI and the name verified.
    pub names: Vec<ServerName<'static>>,
    /// Everything the settings were made from (file contents included):
    /// equal settings keep their pooled connections across a reload.
    identity: Vec<u8>,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("names", &self.names)
            .finish_non_exhaustive()
    }
}

impl PartialEq for UpstreamTls {
    fn eq(&self, other: &Self) -> bool {
        self.identity == other.identity
    }
}

fn error(span: Option<std::ops::Range<usize>>, message: impl Into<String>) -> TlsConfigError {
    TlsConfigError {
        span,
        message: message.into(),
    }
}

/// The host part of `host:port` or `[v6]:port`.
fn host_of(authority: &str) -> &str {
    let host = crate::http::host_without_port(authority.as_bytes());
    // A prefix of a str cut at an ASCII ':' or after ']' is still UTF-8.
    std::str::from_utf8(host)
        .unwrap_or(authority)
        .trim_start_matches('[')
        .trim_end_matches(']')
}

/// Compiles an upstream's `tls` table for endpoints written as
/// `authorities` (`host:port`, as in the config).
pub fn compile(
    section: &toml::Spanned<UpstreamTlsSection>,
    authorities: &[&str],
) -> Result<UpstreamTls, Vec<TlsConfigError>> {
    let mut errors = Vec::new();
    let span = Some(section.span());
    let t = section.get_ref();
    let provider = Arc::new(crate::crypto::provider());
    let mut identity = Vec::new();

    let mut roots = rustls::RootCertStore::empty();
    match &t.ca_file {
        Some(path) => match super::pem::read_roots(path.get_ref()) {
            Ok((found, bytes)) => {
                identity.extend_from_slice(&bytes);
                roots = found;
            }
            Err(e) => errors.push(error(Some(path.span()), format!("ca_file: {e}"))),
        },
        None => {
            identity.extend_from_slice(b"system roots");
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                let _ = roots.add(cert);
            }
            if roots.is_empty() && t.verify {
                errors.push(error(
                    span.clone(),
                    "no system CA certificates found (install ca-certificates, or set ca_file)",
                ));
            }
        }
    }

    let versions: &[&rustls::SupportedProtocolVersion] = match t.min_version.as_deref() {
        None | Some("1.2") => &[&rustls::version::TLS12, &rustls::version::TLS13],
        Some("1.3") => &[&rustls::version::TLS13],
        Some(other) => {
            errors.push(error(
                span.clone(),
                format!("min_version must be \"1.2\" or \"1.3\", got `{other}`"),
            ));
            &[&rustls::version::TLS13]
        }
    };
    let builder = match ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
    {
        Ok(b) => b,
        Err(e) => return Err(vec![error(span, format!("TLS versions: {e}"))]),
    };
    let builder = builder.with_root_certificates(roots);
    let mut config = match (&t.client_cert, &t.client_key) {
        (Some(cert), Some(key)) => {
            use rustls::pki_types::pem::PemObject;
            let chain = super::pem::read_certs(cert.get_ref()).map(|pem| {
                identity.extend_from_slice(&pem.bytes);
                pem.certs
            });
            let key = std::fs::read(key.get_ref())
                .map_err(|e| e.to_string())
                .and_then(|bytes| {
                    identity.extend_from_slice(&bytes);
                    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| e.to_string())
                });
            match (chain, key) {
                (Ok(chain), Ok(key)) => match builder.with_client_auth_cert(chain, key) {
                    Ok(c) => c,
                    Err(e) => {
                        return Err(vec![error(
                            Some(cert.span()),
                            format!("client_cert/client_key: {e}"),
                        )]);
                    }
                },
                (Err(why), _) | (_, Err(why)) => {
                    return Err(vec![error(
                        Some(cert.span()),
                        format!("client_cert/client_key: {why}"),
                    )]);
                }
            }
        }
        (None, None) => builder.with_no_client_auth(),
        _ => {
            return Err(vec![error(span, "client_cert and client_key go together")]);
        }
    };
    if !t.verify {
        tracing::warn!(
            "an upstream's tls.verify = false: its certificates are not checked (anyone on the path can impersonate it)"
        );
        identity.extend_from_slice(b"no verification");
        config
            .dangerous()
            .set_certificate_verifier(Arc::new(NoVerification(provider)));
    }
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // The record layer after the handshake is ringgate's (`record`).
    config.enable_secret_extraction = true;

    let mut names = Vec::new();
    for authority in authorities {
        let name = t
            .server_name
            .as_ref()
            .map_or_else(|| host_of(authority).to_string(), |n| n.get_ref().clone());
        match ServerName::try_from(name.clone()) {
            Ok(n) => names.push(n),
            Err(_) => errors.push(error(
                t.server_name.as_ref().map(|n| n.span()).or(span.clone()),
                format!("`{name}` is not a DNS name or IP address to verify the upstream against"),
            )),
        }
        identity.extend_from_slice(name.as_bytes());
        identity.push(0);
    }
    identity.extend_from_slice(format!("{:?}", t.min_version).as_bytes());
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(UpstreamTls {
        config: Arc::new(config),
        names,
        identity,
    })
}

/// `verify = false`: accepts any certificate (signatures are still
/// checked, so the session is at least bound to the key shown).
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::host_of;

    #[test]
    fn the_host_of_an_authority_drops_port_and_brackets() {
        assert_eq!(host_of("api.internal:8443"), "api.internal");
        assert_eq!(host_of("10.0.0.1:443"), "10.0.0.1");
        assert_eq!(host_of("[::1]:8443"), "::1");
        assert_eq!(host_of("api.internal"), "api.internal");
    }
}
