//! The sealed-value format shared by wrapped data keys and sealed secrets:
//! `0x01 || nonce (24 bytes) || XChaCha20-Poly1305 ciphertext and tag`, with associated data
//! that names exactly which row the value belongs to.

use chacha20poly1305::aead::{Aead, AeadInPlace, Payload};
use chacha20poly1305::{Key, KeyInit, XChaCha20Poly1305, XNonce};
use rand::RngCore;
use rand::rngs::OsRng;
use secrecy::{SecretBox, SecretSlice};

/// The format byte every sealed value starts with.
const FORMAT_V1: u8 = 0x01;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;

/// Why a sealed value did not open. Never carries any of the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OpenError {
    /// Too short, or a format byte this build does not know.
    Malformed,
    /// The tag did not verify: another key, other associated data, or changed bytes.
    Rejected,
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Malformed => "the stored value is not in the sealed format",
            Self::Rejected => {
                "authentication failed (another key, another row's ciphertext, or changed bytes)"
            }
        })
    }
}

/// Associated data binding a wrapped data key to its tenant, version and master key.
pub(crate) fn data_key_ad(tenant: &str, dek_version: i64, master_key_id: &str) -> String {
    format!("steward/v1/dek|{tenant}|{dek_version}|{master_key_id}")
}

/// Associated data binding a sealed secret to its tenant, name, version and data key.
pub(crate) fn secret_ad(tenant: &str, name: &str, version: i64, dek_version: i64) -> String {
    format!("steward/v1/secret|{tenant}|{name}|{version}|{dek_version}")
}

/// 32 random bytes from the operating system.
pub(crate) fn random_key() -> SecretBox<[u8; 32]> {
    let mut key = SecretBox::new(Box::new([0u8; 32]));
    OsRng.fill_bytes(secrecy::ExposeSecretMut::expose_secret_mut(&mut key));
    key
}

/// Seals `plaintext` under `key` with a fresh random nonce.
pub(crate) fn seal(key: &[u8; 32], ad: &str, plaintext: &[u8]) -> Vec<u8> {
    // Encrypted where it lies in the output, which is allocated once.
    let mut out = Vec::with_capacity(1 + NONCE_LEN + plaintext.len() + TAG_LEN);
    out.push(FORMAT_V1);
    let mut nonce = [0u8; NONCE_LEN];
    OsRng.fill_bytes(&mut nonce);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(plaintext);
    let cipher = XChaCha20Poly1305::new(Key::from_slice(key));
    // Encryption fails only for inputs beyond the cipher's limit (256 GiB), far above any
    // value the vault accepts.
    let tag = cipher
        .encrypt_in_place_detached(
            XNonce::from_slice(&nonce),
            ad.as_bytes(),
            &mut out[1 + NONCE_LEN..],
        )
        .expect("plaintext within XChaCha20-Poly1305 limits");
    out.extend_from_slice(&tag);
    out
}

/// Opens a value sealed by [`seal`] with the same key and associated data.
pub(crate) fn open(key: &[u8; 32], ad: &str, sealed: &[u8]) -> Result<SecretSlice<u8>, OpenError> {
    if sealed.len() < 1 + NONCE_LEN + TAG_LEN || sealed[0] != FORMAT_V1 {
        return Err(OpenError::Malformed);
    }
    let (nonce, ciphertext) = sealed[1..].split_at(NONCE_LEN);
    let cipher = XChaCha20Poly1305::new(Key::from_slice(key));
    let payload = Payload {
        msg: ciphertext,
        aad: ad.as_bytes(),
    };
    cipher
        .decrypt(XNonce::from_slice(nonce), payload)
        .map(SecretSlice::from)
        .map_err(|_| OpenError::Rejected)
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;

    const KEY: [u8; 32] = [7u8; 32];

    #[test]
    fn sealed_values_have_the_documented_layout_and_open() {
        let sealed = seal(&KEY, "ad", b"hunter2");
        assert_eq!(sealed[0], 0x01);
        assert_eq!(sealed.len(), 1 + 24 + 7 + 16);
        assert_eq!(
            open(&KEY, "ad", &sealed).unwrap().expose_secret(),
            b"hunter2"
        );
    }

    #[test]
    fn a_sealed_value_is_the_aead_encryption_of_its_plaintext_under_its_nonce() {
        // Sealing encrypts in place; the bytes after the nonce are exactly what the AEAD's
        // one-shot encryption gives (ciphertext, then tag), for an empty value and a long one.
        for plain in [&b""[..], &[0x5a; 3000][..]] {
            let sealed = seal(&KEY, "steward/v1/x|t|1", plain);
            let (nonce, rest) = sealed[1..].split_at(NONCE_LEN);
            let expected = XChaCha20Poly1305::new(Key::from_slice(&KEY))
                .encrypt(
                    XNonce::from_slice(nonce),
                    Payload {
                        msg: plain,
                        aad: b"steward/v1/x|t|1",
                    },
                )
                .unwrap();
            assert_eq!(rest, expected.as_slice());
        }
    }

    #[test]
    fn each_seal_uses_a_fresh_nonce() {
        assert_ne!(
            seal(&KEY, "ad", b"same")[1..25],
            seal(&KEY, "ad", b"same")[1..25]
        );
    }

    #[test]
    fn other_key_other_ad_or_changed_bytes_are_rejected() {
        let sealed = seal(&KEY, "ad", b"hunter2");
        assert_eq!(
            open(&[8u8; 32], "ad", &sealed).unwrap_err(),
            OpenError::Rejected
        );
        assert_eq!(open(&KEY, "ad2", &sealed).unwrap_err(), OpenError::Rejected);
        for i in 1..sealed.len() {
            let mut flipped = sealed.clone();
            flipped[i] ^= 0x01;
            assert_eq!(
                open(&KEY, "ad", &flipped).unwrap_err(),
                OpenError::Rejected,
                "byte {i}"
            );
        }
    }

    #[test]
    fn truncated_or_unknown_formats_are_malformed() {
        let sealed = seal(&KEY, "ad", b"");
        assert_eq!(
            open(&KEY, "ad", &sealed[..sealed.len() - 1]).unwrap_err(),
            OpenError::Malformed
        );
        assert_eq!(open(&KEY, "ad", &[]).unwrap_err(), OpenError::Malformed);
        let mut other = sealed;
        other[0] = 0x02;
        assert_eq!(open(&KEY, "ad", &other).unwrap_err(), OpenError::Malformed);
        assert_eq!(
            open(&KEY, "ad", &vec![0x01; 10_000]).unwrap_err(),
            OpenError::Rejected
        );
    }

    #[test]
    fn associated_data_names_every_binding() {
        assert_eq!(
            data_key_ad("us-acme", 1, "mk-00"),
            "steward/v1/dek|us-acme|1|mk-00"
        );
        assert_eq!(
            secret_ad("us-acme", "slack", 3, 1),
            "steward/v1/secret|us-acme|slack|3|1"
        );
    }
}
