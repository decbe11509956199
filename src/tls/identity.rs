//! [warm] What ringgate reads from a certificate: the names a server
//! certificate covers and when it expires, and a verified client
//! certificate's identity (subject, SANs, SHA-256 fingerprint) as routes,
//! rate limits and the access log see it. Parsed once per certificate
//! (config load, or once per mTLS handshake), never per request.

use rustls::pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;

/// The facts of one certificate.
#[derive(Debug, Clone)]
pub struct CertFacts {
    /// RFC 4514 text of the subject, e.g. `CN=client-1,O=Example`.
    pub subject: Box<str>,
    /// dNSName entries of subjectAltName, lower-cased.
    pub dns_names: Vec<Box<str>>,
    /// Every subjectAltName entry as text (`DNS:…`, `URI:…`, `email:…`,
    /// `IP:…`), comma-separated.
    pub sans: Box<str>,
    /// notAfter, seconds since the Unix epoch.
    pub not_after: i64,
    /// SHA-256 of the DER, lower-case hex.
    pub fingerprint: Box<str>,
}

impl CertFacts {
    pub fn parse(der: &CertificateDer<'_>) -> Result<CertFacts, String> {
        let (_, cert) =
            x509_parser::parse_x509_certificate(der.as_ref()).map_err(|e| e.to_string())?;
        let mut dns_names = Vec::new();
        let mut sans = String::new();
        if let Ok(Some(ext)) = cert.subject_alternative_name() {
            for name in &ext.value.general_names {
                let text = match name {
                    GeneralName::DNSName(n) => {
                        dns_names.push(n.to_ascii_lowercase().into_boxed_str());
                        format!("DNS:{n}")
                    }
                    GeneralName::URI(u) => format!("URI:{u}"),
                    GeneralName::RFC822Name(e) => format!("email:{e}"),
                    GeneralName::IPAddress(bytes) => match bytes.len() {
                        4 => format!(
                            "IP:{}",
                            std::net::Ipv4Addr::from(
                                <[u8; 4]>::try_from(*bytes).unwrap_or_default()
                            )
                        ),
                        16 => format!(
                            "IP:{}",
                            std::net::Ipv6Addr::from(
                                <[u8; 16]>::try_from(*bytes).unwrap_or_default()
                            )
                        ),
                        _ => continue,
                    },
                    _ => continue,
                };
                if !sans.is_empty() {
                    sans.push(',');
                }
                sans.push_str(&text);
            }
        }
        let fingerprint = crate::crypto::hex_digest(&crate::crypto::digest::SHA256, der.as_ref());
        Ok(CertFacts {
            subject: header_safe(cert.subject().to_string()),
            dns_names,
            sans: header_safe(sans),
            not_after: cert.validity().not_after.timestamp(),
            fingerprint: fingerprint.into_boxed_str(),
        })
    }

    /// Seconds until this certificate expires (negative once it has).
    pub fn expires_in(&self, unix_now: i64) -> i64 {
        self.not_after - unix_now
    }
}

/// Text that can go into a header value and a log line: control
/// characters (a certificate may carry any) become `?`.
fn header_safe(text: String) -> Box<str> {
    if text.bytes().all(|b| b >= 0x20 && b != 0x7f) {
        return text.into_boxed_str();
    }
    text.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect::<String>()
        .into_boxed_str()
}
