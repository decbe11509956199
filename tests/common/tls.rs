//! TLS test kit: a throwaway PKI made per test (rcgen; RSA keys from the
//! openssl CLI, which rcgen cannot generate with ring), and rustls clients
//! that report what the handshake did.

#![allow(dead_code)]

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

use super::{Conn, temp_path};

pub type TlsConn = Conn<StreamOwned<ClientConnection, TcpStream>>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alg {
    EcdsaP256,
    Rsa2048,
}

/// A certificate and key written to files, with the PEM kept too.
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub cert_pem: String,
    pub key_pem: String,
}

/// A test CA that issues server and client certificates into a temp dir.
pub struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
    pub ca_path: PathBuf,
    pub ca_der: CertificateDer<'static>,
}

/// A fresh RSA-2048 private key, PKCS#8 PEM, from the openssl CLI.
pub fn rsa_private_pem() -> String {
    let out = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
        ])
        .output()
        .expect("the openssl CLI makes RSA test keys");
    assert!(out.status.success(), "openssl genpkey failed");
    String::from_utf8(out.stdout).unwrap()
}

fn key_for(alg: Alg) -> KeyPair {
    match alg {
        Alg::EcdsaP256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap(),
        Alg::Rsa2048 => {
            KeyPair::from_pem_and_sign_algo(&rsa_private_pem(), &rcgen::PKCS_RSA_SHA256).unwrap()
        }
    }
}

impl Pki {
    pub fn new(name: &str) -> Pki {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(params, key).unwrap();
        let ca_path = temp_path(&format!("{name}-ca.pem"));
        std::fs::write(&ca_path, ca.pem()).unwrap();
        let ca_der = ca.der().clone();
        Pki {
            ca,
            ca_path,
            ca_der,
        }
    }

    fn issue(&self, params: CertificateParams, alg: Alg, file: &str) -> Issued {
        let key = key_for(alg);
        let cert = params.signed_by(&key, &self.ca).unwrap();
        let cert_path = temp_path(&format!("{file}.pem"));
        let key_path = cert_path.with_file_name(format!("{file}.key"));
        let cert_pem = cert.pem();
        let key_pem = key.serialize_pem();
        std::fs::write(&cert_path, &cert_pem).unwrap();
        std::fs::write(&key_path, &key_pem).unwrap();
        Issued {
            cert: cert_path,
            key: key_path,
            cert_pem,
            key_pem,
        }
    }

    /// A server certificate for `names` (SANs), valid now.
    pub fn server(&self, names: &[&str], alg: Alg) -> Issued {
        self.server_valid(names, alg, -1, 30)
    }

    /// A server certificate valid from `from_days` to `to_days` around now.
    pub fn server_valid(&self, names: &[&str], alg: Alg, from_days: i64, to_days: i64) -> Issued {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(DnType::CommonName, names[0]);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now + time::Duration::days(from_days);
        params.not_after = now + time::Duration::days(to_days);
        let file = format!("{}-{alg:?}", names[0].replace('*', "star"));
        self.issue(params, alg, &file)
    }

    /// A client certificate with common name `cn` and a URI SAN.
    pub fn client(&self, cn: &str) -> Issued {
        let mut params = CertificateParams::new(vec![format!("{cn}.clients.test")]).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "ringgate tests");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(params, Alg::EcdsaP256, &format!("client-{cn}"))
    }
}

/// What a client connection can vary.
#[derive(Clone)]
pub struct ClientOptions {
    pub versions: Vec<&'static rustls::SupportedProtocolVersion>,
    pub alpn: Vec<Vec<u8>>,
    /// Client certificate and key (PEM).
    pub identity: Option<(String, String)>,
    /// Only these signature schemes' keys are acceptable (cipher suites
    /// limited to ECDSA or RSA authentication); empty: all.
    pub only_rsa: bool,
    pub chacha_only: bool,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            versions: vec![&rustls::version::TLS13, &rustls::version::TLS12],
            alpn: vec![b"http/1.1".to_vec()],
            identity: None,
            only_rsa: false,
            chacha_only: false,
        }
    }
}

/// A client config trusting `roots`. Reusing one config shares its
/// session cache: that is how a client resumes.
pub fn client_config(
    roots: &[&CertificateDer<'static>],
    options: &ClientOptions,
) -> Arc<ClientConfig> {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    if options.only_rsa {
        provider.cipher_suites.retain(|s| {
            !matches!(
                s,
                rustls::SupportedCipherSuite::Tls12(t)
                    if t.sign.iter().any(|s| format!("{s:?}").starts_with("ECDSA"))
            )
        });
    }
    if options.chacha_only {
        provider
            .cipher_suites
            .retain(|s| format!("{:?}", s.suite()).contains("CHACHA20"));
    }
    let mut store = RootCertStore::empty();
    for r in roots {
        store.add((*r).clone()).unwrap();
    }
    let builder = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&options.versions)
        .unwrap()
        .with_root_certificates(store);
    let mut config = match &options.identity {
        Some((cert, key)) => {
            use rustls::pki_types::pem::PemObject;
            let chain = CertificateDer::pem_slice_iter(cert.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    if options.only_rsa {
        // Offer only RSA signature schemes: a server with both an ECDSA and
        // an RSA certificate must pick the RSA one.
        config
            .dangerous()
            .set_certificate_verifier(Arc::new(OnlyRsa(
                rustls::client::WebPkiServerVerifier::builder(Arc::new({
                    let mut s = RootCertStore::empty();
                    for r in roots {
                        s.add((*r).clone()).unwrap();
                    }
                    s
                }))
                .build()
                .unwrap(),
            )));
    }
    config.alpn_protocols = options.alpn.clone();
    Arc::new(config)
}

/// A server verifier that offers only RSA signature schemes.
#[derive(Debug)]
struct OnlyRsa(Arc<rustls::client::WebPkiServerVerifier>);

impl rustls::client::danger::ServerCertVerifier for OnlyRsa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        self.0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0
            .supported_verify_schemes()
            .into_iter()
            .filter(|s| format!("{s:?}").starts_with("RSA"))
            .collect()
    }
}

/// Connects and completes the handshake; `Err` carries rustls's error.
pub fn connect(
    addr: SocketAddr,
    sni: &str,
    config: &Arc<ClientConfig>,
) -> Result<TlsConn, rustls::Error> {
    let mut socket = TcpStream::connect(addr).expect("connect");
    socket
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    socket.set_nodelay(true).unwrap();
    let name = ServerName::try_from(sni.to_string()).unwrap();
    let mut tls = ClientConnection::new(config.clone(), name).unwrap();
    while tls.is_handshaking() {
        if let Err(e) = tls.complete_io(&mut socket) {
            return Err(
                match e
                    .into_inner()
                    .map(|inner| inner.downcast::<rustls::Error>())
                {
                    Some(Ok(e)) => *e,
                    _ => rustls::Error::General("handshake I/O failed".into()),
                },
            );
        }
    }
    let _ = socket.flush();
    Ok(Conn::over(StreamOwned::new(tls, socket)))
}

/// The subject alternative names (DNS) of the certificate a server showed.
pub fn server_names(conn: &TlsConn) -> Vec<String> {
    let leaf = &conn.stream.conn.peer_certificates().unwrap()[0];
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).unwrap();
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(d) = n {
                names.push(d.to_string());
            }
        }
    }
    names
}

/// The public key algorithm of the certificate a server showed.
pub fn server_key_is_rsa(conn: &TlsConn) -> bool {
    let leaf = &conn.stream.conn.peer_certificates().unwrap()[0];
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).unwrap();
    cert.public_key().algorithm.algorithm == x509_parser::oid_registry::OID_PKCS1_RSAENCRYPTION
}

pub fn resumed(conn: &TlsConn) -> bool {
    conn.stream.conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed)
}

/// A config snippet: a TLS listener section for `certs` (PEM paths).
pub fn listener_tls(certs: &[&Issued], extra: &str) -> String {
    let entries: Vec<String> = certs
        .iter()
        .map(|c| {
            format!(
                "{{ cert = \"{}\", key = \"{}\" }}",
                c.cert.display(),
                c.key.display()
            )
        })
        .collect();
    format!(
        "[listeners.tls]\ncertificates = [{}]\n{extra}\n",
        entries.join(", ")
    )
}

/// A rustls server config for a test upstream serving `cert`, demanding
/// client certificates from `client_ca` when given.
pub fn server_config(cert: &Issued, client_ca: Option<&Pki>) -> Arc<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    let chain = CertificateDer::pem_slice_iter(cert.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            roots.add(ca.ca_der.clone()).unwrap();
            builder.with_client_cert_verifier(
                rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .unwrap(),
            )
        }
        None => builder.with_no_client_auth(),
    };
    Arc::new(builder.with_single_cert(chain, key).unwrap())
}
