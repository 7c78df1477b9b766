//! Sealing CA private keys with AES-256-GCM under a key-encryption key (KEK) that lives outside
//! the database, so that a dump of the database holds no private key in clear.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rand::RngCore;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::keys::SecretKey;

/// Why a KEK was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KekError {
    #[error("KEK id must be 1 to 64 characters of letters, digits, '.', '-' and '_'")]
    BadId,
    #[error("KEK is not valid base64")]
    BadBase64,
    #[error("KEK must be 32 bytes (AES-256), got {len}")]
    WrongLength { len: usize },
    #[error("KEK id {0} appears twice in the key ring")]
    DuplicateId(String),
}

/// Why sealing or unsealing failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("no KEK with id {0} in the key ring; was it removed before everything was resealed?")]
    UnknownKek(String),
    /// Wrong KEK material, wrong owner (AAD) or altered ciphertext: AES-GCM cannot tell which.
    #[error("the sealed key does not open with this KEK and owner: wrong key, wrong owner or tampered")]
    Open,
    #[error("the sealed key is malformed")]
    Malformed,
    #[error("encryption failed")]
    Seal,
}

/// A key-encryption key: 32 bytes for AES-256-GCM and the id that sealed keys record.
/// Its bytes never appear in `Debug` output and are wiped on drop.
#[derive(Clone)]
pub struct Kek {
    id: String,
    key: Zeroizing<[u8; 32]>,
}

impl Kek {
    /// A KEK from its id and raw bytes.
    pub fn new(id: &str, key: [u8; 32]) -> Result<Self, KekError> {
        check_id(id)?;
        Ok(Self { id: id.to_owned(), key: Zeroizing::new(key) })
    }

    /// Parses the base64 form (standard alphabet, padding optional, surrounding whitespace
    /// ignored so that a file's trailing newline does not matter).
    pub fn from_base64(id: &str, text: &str) -> Result<Self, KekError> {
        let trimmed = text.trim().trim_end_matches('=');
        let bytes = Zeroizing::new(
            base64::engine::general_purpose::STANDARD_NO_PAD
                .decode(trimmed)
                .map_err(|_| KekError::BadBase64)?,
        );
        let key: [u8; 32] =
            bytes.as_slice().try_into().map_err(|_| KekError::WrongLength { len: bytes.len() })?;
        Self::new(id, key)
    }

    /// A fresh random KEK (for the embedded default's first start).
    pub fn generate(id: &str) -> Result<Self, KekError> {
        let mut key = Zeroizing::new([0u8; 32]);
        rand::rng().fill_bytes(key.as_mut());
        check_id(id)?;
        Ok(Self { id: id.to_owned(), key })
    }

    /// The KEK's id, recorded in everything it seals.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The base64 form, for writing the KEK file; never for logs.
    pub fn expose_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(STANDARD.encode(self.key.as_ref()))
    }

    fn aead(&self) -> LessSafeKey {
        // AES_256_GCM takes exactly 32 bytes, which the type guarantees.
        let unbound = UnboundKey::new(&AES_256_GCM, self.key.as_ref())
            .unwrap_or_else(|_| unreachable!("AES-256 key length is 32"));
        LessSafeKey::new(unbound)
    }
}

impl fmt::Debug for Kek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kek").field("id", &self.id).field("key", &"[redacted]").finish()
    }
}

fn check_id(id: &str) -> Result<(), KekError> {
    let ok = (1..=64).contains(&id.len())
        && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    if ok { Ok(()) } else { Err(KekError::BadId) }
}

/// The KEKs in use: the current one seals; previous ones only unseal, until everything they
/// sealed has been resealed (`trellis kek rotate`).
#[derive(Debug, Clone)]
pub struct KeyRing {
    current: Kek,
    previous: Vec<Kek>,
}

impl KeyRing {
    /// A ring with one KEK.
    pub fn new(current: Kek) -> Self {
        Self { current, previous: Vec::new() }
    }

    /// A ring whose current KEK is `current`, still able to open what `previous` sealed.
    pub fn with_previous(current: Kek, previous: Vec<Kek>) -> Result<Self, KekError> {
        let mut seen = vec![current.id.as_str()];
        for k in &previous {
            if seen.contains(&k.id.as_str()) {
                return Err(KekError::DuplicateId(k.id.clone()));
            }
            seen.push(&k.id);
        }
        Ok(Self { current, previous })
    }

    /// The id of the KEK that seals.
    pub fn current_id(&self) -> &str {
        &self.current.id
    }

    /// Whether `sealed` was sealed by a KEK other than the current one.
    pub fn needs_reseal(&self, sealed: &SealedKey) -> bool {
        sealed.kek_id != self.current.id
    }

    fn find(&self, id: &str) -> Option<&Kek> {
        std::iter::once(&self.current).chain(&self.previous).find(|k| k.id == id)
    }
}

/// A private key encrypted under a KEK: safe to store in the database.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedKey {
    /// Which KEK sealed it.
    pub kek_id: String,
    /// The random 96-bit AES-GCM nonce.
    pub nonce: [u8; NONCE_LEN],
    /// Ciphertext followed by the 16-byte GCM tag.
    pub ciphertext: Vec<u8>,
}

impl fmt::Debug for SealedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealedKey")
            .field("kek_id", &self.kek_id)
            .field("ciphertext_len", &self.ciphertext.len())
            .finish()
    }
}

/// Domain separation: a sealed CA key can never be mistaken for something else sealed with
/// the same KEK, and the KEK id is authenticated along with the caller's owner bytes.
fn full_aad(kek_id: &str, aad: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + kek_id.len() + aad.len());
    out.extend_from_slice(b"trellis-ca-key-v1\0");
    out.extend_from_slice(kek_id.as_bytes());
    out.push(0);
    out.extend_from_slice(aad);
    out
}

/// Owner bytes for the AAD from parts such as org id, mesh id and CA id. Each part is
/// length-prefixed so that `("ab", "c")` and `("a", "bc")` differ.
pub fn owner_aad(parts: &[&str]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in parts {
        out.extend_from_slice(&u32::try_from(p.len()).unwrap_or(u32::MAX).to_be_bytes());
        out.extend_from_slice(p.as_bytes());
    }
    out
}

/// Encrypts `plaintext` (a PKCS#8 key) under the ring's current KEK, bound to `aad`.
pub fn seal(keyring: &KeyRing, plaintext: &[u8], aad: &[u8]) -> Result<SealedKey, SealError> {
    let kek = &keyring.current;
    let mut nonce = [0u8; NONCE_LEN];
    rand::rng().fill_bytes(&mut nonce);
    let mut buf = plaintext.to_vec();
    kek.aead()
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(full_aad(&kek.id, aad)),
            &mut buf,
        )
        .map_err(|_| SealError::Seal)?;
    Ok(SealedKey { kek_id: kek.id.clone(), nonce, ciphertext: buf })
}

/// Decrypts a sealed key with the KEK it names; fails on a wrong owner or any alteration.
pub fn unseal(keyring: &KeyRing, sealed: &SealedKey, aad: &[u8]) -> Result<SecretKey, SealError> {
    let kek = keyring.find(&sealed.kek_id).ok_or_else(|| SealError::UnknownKek(sealed.kek_id.clone()))?;
    if sealed.ciphertext.len() < AES_256_GCM.tag_len() {
        return Err(SealError::Malformed);
    }
    let mut buf = Zeroizing::new(sealed.ciphertext.clone());
    let plain = kek
        .aead()
        .open_in_place(
            Nonce::assume_unique_for_key(sealed.nonce),
            Aad::from(full_aad(&kek.id, aad)),
            buf.as_mut_slice(),
        )
        .map_err(|_| SealError::Open)?;
    Ok(SecretKey::from_pkcs8_der(plain.to_vec()))
}

/// Opens a sealed key and seals it again under the ring's current KEK (KEK rotation).
pub fn reseal(keyring: &KeyRing, sealed: &SealedKey, aad: &[u8]) -> Result<SealedKey, SealError> {
    let key = unseal(keyring, sealed, aad)?;
    seal(keyring, key.expose_pkcs8_der(), aad)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"pkcs8 bytes that must stay secret";

    fn kek(id: &str, byte: u8) -> Kek {
        Kek::new(id, [byte; 32]).unwrap()
    }

    #[test]
    fn round_trip_and_fresh_nonces() {
        let ring = KeyRing::new(kek("k1", 7));
        let aad = owner_aad(&["org-1", "mesh-1", "ca-1"]);
        let a = seal(&ring, SECRET, &aad).unwrap();
        let b = seal(&ring, SECRET, &aad).unwrap();
        assert_ne!(a.nonce, b.nonce);
        assert_ne!(a.ciphertext, b.ciphertext);
        assert!(!a.ciphertext.windows(8).any(|w| SECRET.windows(8).any(|s| s == w)));
        assert_eq!(a.kek_id, "k1");
        assert_eq!(unseal(&ring, &a, &aad).unwrap().expose_pkcs8_der(), SECRET);
    }

    #[test]
    fn wrong_owner_wrong_kek_and_tampering_fail() {
        let ring = KeyRing::new(kek("k1", 7));
        let aad = owner_aad(&["org-1", "mesh-1", "ca-1"]);
        let sealed = seal(&ring, SECRET, &aad).unwrap();

        let other_owner = owner_aad(&["org-2", "mesh-1", "ca-1"]);
        assert_eq!(unseal(&ring, &sealed, &other_owner).unwrap_err(), SealError::Open);
        // Length prefixes keep shifted boundaries apart.
        assert_ne!(owner_aad(&["ab", "c"]), owner_aad(&["a", "bc"]));

        let same_id_other_bytes = KeyRing::new(kek("k1", 8));
        assert_eq!(unseal(&same_id_other_bytes, &sealed, &aad).unwrap_err(), SealError::Open);
        let other_id = KeyRing::new(kek("k2", 7));
        assert_eq!(unseal(&other_id, &sealed, &aad).unwrap_err(), SealError::UnknownKek("k1".into()));

        for i in [0, sealed.ciphertext.len() / 2, sealed.ciphertext.len() - 1] {
            let mut t = sealed.clone();
            t.ciphertext[i] ^= 0x01;
            assert_eq!(unseal(&ring, &t, &aad).unwrap_err(), SealError::Open, "byte {i}");
        }
        let mut t = sealed.clone();
        t.nonce[0] ^= 1;
        assert_eq!(unseal(&ring, &t, &aad).unwrap_err(), SealError::Open);
        // Relabelling the KEK id is caught too: the id is authenticated.
        let both = KeyRing::with_previous(kek("k2", 7), vec![kek("k1", 7)]).unwrap();
        let mut t = sealed.clone();
        t.kek_id = "k2".into();
        assert_eq!(unseal(&both, &t, &aad).unwrap_err(), SealError::Open);
        let mut t = sealed;
        t.ciphertext.truncate(3);
        assert_eq!(unseal(&ring, &t, &aad).unwrap_err(), SealError::Malformed);
    }

    #[test]
    fn reseal_moves_to_the_current_kek() {
        let aad = owner_aad(&["org", "mesh", "ca"]);
        let old = KeyRing::new(kek("2024", 1));
        let sealed = seal(&old, SECRET, &aad).unwrap();
        let rotated = KeyRing::with_previous(kek("2025", 2), vec![kek("2024", 1)]).unwrap();
        assert!(rotated.needs_reseal(&sealed));
        assert_eq!(unseal(&rotated, &sealed, &aad).unwrap().expose_pkcs8_der(), SECRET);
        let moved = reseal(&rotated, &sealed, &aad).unwrap();
        assert_eq!(moved.kek_id, "2025");
        assert!(!rotated.needs_reseal(&moved));
        // Once the old KEK is gone, only the resealed copy opens.
        let new_only = KeyRing::new(kek("2025", 2));
        assert_eq!(unseal(&new_only, &moved, &aad).unwrap().expose_pkcs8_der(), SECRET);
        assert_eq!(unseal(&new_only, &sealed, &aad).unwrap_err(), SealError::UnknownKek("2024".into()));
        assert_eq!(
            KeyRing::with_previous(kek("a", 1), vec![kek("a", 2)]).unwrap_err(),
            KekError::DuplicateId("a".into())
        );
    }

    #[test]
    fn kek_parsing() {
        let k = Kek::generate("main").unwrap();
        let text = format!("{}\n", k.expose_base64().as_str());
        let back = Kek::from_base64("main", &text).unwrap();
        assert_eq!(back.key.as_ref(), k.key.as_ref());
        assert_eq!(Kek::from_base64("main", "not base64!").unwrap_err(), KekError::BadBase64);
        assert_eq!(
            Kek::from_base64("main", &STANDARD.encode([1u8; 16])).unwrap_err(),
            KekError::WrongLength { len: 16 }
        );
        assert_eq!(Kek::from_base64("bad id", &text).unwrap_err(), KekError::BadId);
        assert_eq!(Kek::from_base64("", &text).unwrap_err(), KekError::BadId);
    }

    #[test]
    fn debug_output_holds_no_key_bytes() {
        let k = kek("k1", 0xAB);
        let ring = KeyRing::new(k.clone());
        let sealed = seal(&ring, SECRET, b"owner").unwrap();
        let opened = unseal(&ring, &sealed, b"owner").unwrap();
        let shown = format!("{k:?} {ring:?} {sealed:?} {opened:?} {k:#?}");
        let b64 = k.expose_base64();
        assert!(!shown.contains(b64.as_str()), "{shown}");
        assert!(!shown.contains("171"), "decimal key bytes leaked: {shown}");
        assert!(!shown.to_lowercase().contains("abab"), "hex key bytes leaked: {shown}");
        assert!(!shown.contains("secret"), "plaintext leaked: {shown}");
        assert!(shown.contains("redacted"));
    }
}
