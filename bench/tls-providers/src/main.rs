//! Handshakes per second (server side) and AEAD bytes per second for
//! rustls's ring and aws-lc-rs providers, measured in one process with
//! interleaved rounds; medians reported. Both providers use the same key
//! exchange (X25519) so the figures compare the implementations, not
//! aws-lc-rs's post-quantum default.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};

const ROUNDS: usize = 5;
const ROUND: Duration = Duration::from_millis(600);

struct Pki {
    ca: CertificateDer<'static>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

fn pki(rsa: bool) -> Pki {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let key = if rsa {
        let out = std::process::Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
            ])
            .output()
            .expect("openssl makes the RSA key");
        rcgen::KeyPair::from_pem_and_sign_algo(
            std::str::from_utf8(&out.stdout).unwrap(),
            &rcgen::PKCS_RSA_SHA256,
        )
        .unwrap()
    } else {
        rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap()
    };
    let cert = rcgen::CertificateParams::new(vec!["bench.test".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    Pki {
        ca: ca.der().clone(),
        chain: vec![cert.der().clone()],
        key: PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
    }
}

struct Side {
    name: &'static str,
    client: Arc<ClientConfig>,
    server: Arc<ServerConfig>,
}

fn side(name: &'static str, mut provider: CryptoProvider, pki: &Pki) -> Side {
    provider
        .kx_groups
        .retain(|g| format!("{:?}", g.name()) == "X25519");
    let provider = Arc::new(provider);
    let mut roots = RootCertStore::empty();
    roots.add(pki.ca.clone()).unwrap();
    let client = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut server = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(pki.chain.clone(), pki.key.clone_key())
        .unwrap();
    server.ticketer = if name == "ring" {
        rustls::crypto::ring::Ticketer::new().unwrap()
    } else {
        rustls::crypto::aws_lc_rs::Ticketer::new().unwrap()
    };
    server.send_tls13_tickets = 1;
    Side {
        name,
        client: Arc::new(client),
        server: Arc::new(server),
    }
}

/// One handshake in memory; returns the time the server side took.
fn handshake(client: &Arc<ClientConfig>, server: &Arc<ServerConfig>) -> (Duration, bool) {
    let name = ServerName::try_from("bench.test").unwrap();
    let mut c = ClientConnection::new(client.clone(), name).unwrap();
    let mut s = ServerConnection::new(server.clone()).unwrap();
    let mut server_time = Duration::ZERO;
    let mut buf = Vec::with_capacity(16 * 1024);
    loop {
        buf.clear();
        while c.wants_write() {
            c.write_tls(&mut buf).unwrap();
        }
        if !buf.is_empty() {
            let t = Instant::now();
            s.read_tls(&mut &buf[..]).unwrap();
            s.process_new_packets().unwrap();
            server_time += t.elapsed();
        }
        buf.clear();
        let t = Instant::now();
        while s.wants_write() {
            s.write_tls(&mut buf).unwrap();
        }
        server_time += t.elapsed();
        if !buf.is_empty() {
            c.read_tls(&mut &buf[..]).unwrap();
            c.process_new_packets().unwrap();
        }
        if !c.is_handshaking() && !s.is_handshaking() && !s.wants_write() && !c.wants_write() {
            let resumed = s.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
            return (server_time, resumed);
        }
    }
}

/// Server handshakes per second of server time, over one round.
fn handshakes_per_sec(side: &Side, resume: bool) -> f64 {
    let client = if resume {
        side.client.clone()
    } else {
        let mut c = (*side.client).clone();
        c.resumption = rustls::client::Resumption::disabled();
        Arc::new(c)
    };
    if resume {
        handshake(&client, &side.server);
    }
    let start = Instant::now();
    let (mut n, mut server) = (0u64, Duration::ZERO);
    while start.elapsed() < ROUND {
        let (t, resumed) = handshake(&client, &side.server);
        assert_eq!(resumed, resume);
        server += t;
        n += 1;
    }
    n as f64 / server.as_secs_f64()
}

/// Bytes per second sealing (or opening) 16 KiB records, for one
/// provider's `aead` module (ring's and aws-lc-rs's have the same API).
macro_rules! aead_throughput {
    ($name:ident, $($aead:ident)::+) => {
        fn $name(alg: &'static $($aead)::+::Algorithm, open: bool) -> f64 {
            use $($aead)::+::{Aad, LessSafeKey, Nonce, UnboundKey};
            let key = LessSafeKey::new(UnboundKey::new(alg, &[7u8; 32][..alg.key_len()]).unwrap());
            let mut buf = vec![1u8; 16 * 1024];
            let tag = key
                .seal_in_place_separate_tag(Nonce::assume_unique_for_key([0; 12]), Aad::empty(), &mut buf)
                .unwrap();
            let mut sealed = buf.clone();
            sealed.extend_from_slice(tag.as_ref());
            // Opening decrypts in place: each round restores the ciphertext first
            // (a 16 KiB copy, the same for both providers).
            let mut copy = sealed.clone();
            let start = Instant::now();
            let mut bytes = 0u64;
            while start.elapsed() < ROUND {
                if open {
                    copy.copy_from_slice(&sealed);
                    key.open_in_place(Nonce::assume_unique_for_key([0; 12]), Aad::empty(), &mut copy)
                        .unwrap();
                } else {
                    let _ = key.seal_in_place_separate_tag(
                        Nonce::assume_unique_for_key([0; 12]),
                        Aad::empty(),
                        &mut buf,
                    );
                }
                bytes += 16 * 1024;
            }
            bytes as f64 / start.elapsed().as_secs_f64()
        }
    };
}

aead_throughput!(aead_ring, ring::aead);
aead_throughput!(aead_aws, aws_lc_rs::aead);

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let ecdsa = pki(false);
    let rsa = pki(true);
    let sides = |p: &Pki| {
        [
            side("ring", rustls::crypto::ring::default_provider(), p),
            side(
                "aws-lc-rs",
                rustls::crypto::aws_lc_rs::default_provider(),
                p,
            ),
        ]
    };
    let (ecdsa_sides, rsa_sides) = (sides(&ecdsa), sides(&rsa));
    println!(
        "TLS 1.3, X25519, server-side handshakes per second of server CPU (median of {ROUNDS} interleaved rounds)"
    );
    println!("| case | ring | aws-lc-rs | aws-lc-rs ÷ ring |");
    println!("|---|---|---|---|");
    for (case, sides, resume) in [
        ("full, ECDSA P-256", &ecdsa_sides, false),
        ("full, RSA-2048", &rsa_sides, false),
        ("resumed (ticket)", &ecdsa_sides, true),
    ] {
        let mut results = [Vec::new(), Vec::new()];
        for _ in 0..ROUNDS {
            for (i, s) in sides.iter().enumerate() {
                results[i].push(handshakes_per_sec(s, resume));
            }
        }
        let [r, a] = results.map(median);
        println!("| {case} | {r:.0} | {a:.0} | {:.2} |", a / r);
        let _ = sides[0].name;
    }
    println!();
    println!("AEAD on 16 KiB records, MB/s (median of {ROUNDS} interleaved rounds)");
    println!("| cipher | ring seal | aws-lc-rs seal | ring open | aws-lc-rs open |");
    println!("|---|---|---|---|---|");
    let ciphers: [(
        &str,
        &'static ring::aead::Algorithm,
        &'static aws_lc_rs::aead::Algorithm,
    ); 3] = [
        (
            "AES-128-GCM",
            &ring::aead::AES_128_GCM,
            &aws_lc_rs::aead::AES_128_GCM,
        ),
        (
            "AES-256-GCM",
            &ring::aead::AES_256_GCM,
            &aws_lc_rs::aead::AES_256_GCM,
        ),
        (
            "ChaCha20-Poly1305",
            &ring::aead::CHACHA20_POLY1305,
            &aws_lc_rs::aead::CHACHA20_POLY1305,
        ),
    ];
    for (name, r, a) in ciphers {
        let mut v: [Vec<f64>; 4] = Default::default();
        for _ in 0..ROUNDS {
            v[0].push(aead_ring(r, false));
            v[1].push(aead_aws(a, false));
            v[2].push(aead_ring(r, true));
            v[3].push(aead_aws(a, true));
        }
        let [rs, as_, ro, ao] = v.map(|x| median(x) / 1e6);
        println!("| {name} | {rs:.0} | {as_:.0} | {ro:.0} | {ao:.0} |");
    }
}
