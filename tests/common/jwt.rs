//! Test signing keys for every JWS algorithm ringgate verifies, written
//! where a gateway config can name them, and tokens signed with them.
#![allow(dead_code)]

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rcgen::KeyPair;

/// A key that signs test tokens, and what the gateway config needs to
/// verify them (one `[[auth.NAME.keys]]` entry).
pub struct SigningKey {
    pub alg: Algorithm,
    pub kid: String,
    encoding: EncodingKey,
    /// The config entry, e.g. `{ kid = "k1", alg = "ES256", pem_file = "…" }`.
    pub entry: String,
}

impl SigningKey {
    /// A fresh key for `alg`, its public half (or secret) in a file.
    pub fn new(alg: Algorithm, kid: &str) -> SigningKey {
        let dir = super::temp_path(&format!("jwt-{kid}"));
        std::fs::create_dir_all(&dir).unwrap();
        let (encoding, entry) = match alg {
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
                // Text, as secrets usually are: the gateway drops a trailing
                // newline from secret files, which random bytes could end in.
                let mut random = [0u8; 32];
                std::io::Read::read_exact(
                    &mut std::fs::File::open("/dev/urandom").unwrap(),
                    &mut random,
                )
                .unwrap();
                let secret: Vec<u8> = random
                    .iter()
                    .flat_map(|b| format!("{b:02x}").into_bytes())
                    .collect();
                let path = dir.join("secret");
                std::fs::write(&path, &secret).unwrap();
                (
                    EncodingKey::from_secret(&secret).unwrap(),
                    format!("secret_file = \"{}\"", path.display()),
                )
            }
            _ => {
                let (private, public) = match alg {
                    Algorithm::ES256 => {
                        let k = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
                        (k.serialize_pem(), k.public_key_pem())
                    }
                    Algorithm::ES384 => {
                        let k = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
                        (k.serialize_pem(), k.public_key_pem())
                    }
                    Algorithm::EdDSA => {
                        let k = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
                        (k.serialize_pem(), k.public_key_pem())
                    }
                    _ => {
                        let pem = super::tls::rsa_private_pem();
                        let k =
                            KeyPair::from_pem_and_sign_algo(&pem, &rcgen::PKCS_RSA_SHA256).unwrap();
                        (pem, k.public_key_pem())
                    }
                };
                let path = dir.join("public.pem");
                std::fs::write(&path, public).unwrap();
                let encoding = match alg {
                    Algorithm::ES256 | Algorithm::ES384 => {
                        EncodingKey::from_ec_pem(private.as_bytes())
                    }
                    Algorithm::EdDSA => EncodingKey::from_ed_pem(private.as_bytes()),
                    _ => EncodingKey::from_rsa_pem(private.as_bytes()),
                }
                .unwrap();
                (encoding, format!("pem_file = \"{}\"", path.display()))
            }
        };
        SigningKey {
            alg,
            kid: kid.to_string(),
            encoding,
            entry: format!("{{ kid = \"{kid}\", alg = \"{alg:?}\", {entry} }}"),
        }
    }

    /// A token with these claims, with this key's `kid`.
    pub fn sign(&self, claims: &serde_json::Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).unwrap()
    }

    /// The same, under another header (wrong `kid`, no `kid`).
    pub fn sign_with(&self, header: Header, claims: &serde_json::Value) -> String {
        jsonwebtoken::encode(&header, claims, &self.encoding).unwrap()
    }
}

/// Wall-clock Unix seconds (tokens carry wall-clock times).
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}
