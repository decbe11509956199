//! [cold/hot] The one crypto provider, for rustls (handshakes), the TLS
//! record layer, session tickets, and every digest ringgate takes (rate
//! limit keys, certificate fingerprints, Redis script names); JWT
//! verification will use it too. Everything imports it from here, so the
//! choice is one file.
//!
//! aws-lc-rs, chosen over *ring* by measurement on this project's machines
//! (`bench/tls-providers`, docs/tls.md): 1.2× the ECDSA and resumed
//! handshakes per second, 1.9× the RSA-2048 ones, twice the AES-GCM
//! throughput. It builds with the C compiler Rust's linker already needs
//! (no CMake, Go or NASM on x86-64 and aarch64 Linux).

pub use aws_lc_rs::{aead, digest, hkdf, rand};

/// Appends `bytes` as lower-case hex (fingerprints, key hashes, Redis keys).
pub fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    out.reserve(bytes.len() * 2);
    for &b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 15)]));
    }
}

/// The lower-case hex of `data`'s digest under `algorithm`.
pub fn hex_digest(algorithm: &'static digest::Algorithm, data: &[u8]) -> String {
    let mut out = String::new();
    push_hex(&mut out, digest::digest(algorithm, data).as_ref());
    out
}

/// rustls's aws-lc-rs provider with its defaults: the safe cipher suites,
/// X25519MLKEM768 (post-quantum hybrid) preferred, then X25519, P-256, P-384.
pub fn provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::aws_lc_rs::default_provider()
}
