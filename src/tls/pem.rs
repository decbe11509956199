//! [cold] Certificates from PEM files, read once per config load: the one
//! reader behind listener certificates and client CAs, upstream CAs and
//! client certificates, and the Redis CA.

use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// A PEM file's bytes (for digests of what a config was made from) and
/// the certificates in it, at least one.
pub struct PemCerts {
    pub bytes: Vec<u8>,
    pub certs: Vec<CertificateDer<'static>>,
}

pub fn read_certs(path: &str) -> Result<PemCerts, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read `{path}`: {e}"))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("`{path}` is not valid PEM: {e}"))?;
    if certs.is_empty() {
        return Err(format!("`{path}` holds no certificate"));
    }
    Ok(PemCerts { bytes, certs })
}

/// A trust store of the CA certificates in `path`.
pub fn read_roots(path: &str) -> Result<(RootCertStore, Vec<u8>), String> {
    let pem = read_certs(path)?;
    let mut roots = RootCertStore::empty();
    for cert in pem.certs {
        roots.add(cert).map_err(|e| format!("`{path}`: {e}"))?;
    }
    Ok((roots, pem.bytes))
}
