//! A sealed key as `ca` makes it and as the store keeps it: the one conversion each way, for
//! the mesh CAs and the platform CA alike.

use trellis_ca::SealedKey;
use trellis_store::SealedBytes;

use crate::PkiError;

pub(crate) fn sealed_bytes(k: &SealedKey) -> SealedBytes {
    SealedBytes { kek_id: k.kek_id.clone(), nonce: k.nonce.to_vec(), ciphertext: k.ciphertext.clone() }
}

pub(crate) fn sealed_key(b: &SealedBytes) -> Result<SealedKey, PkiError> {
    let nonce = b.nonce.as_slice().try_into().map_err(|_| PkiError::internal("stored nonce length"))?;
    Ok(SealedKey { kek_id: b.kek_id.clone(), nonce, ciphertext: b.ciphertext.clone() })
}
