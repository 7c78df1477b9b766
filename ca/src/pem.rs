//! PEM text in and out. Parsing goes through rustls-pki-types; writing is ours (64-column base64).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateSigningRequestDer, PrivatePkcs8KeyDer};

/// One PEM block with `label` around `der`.
pub fn encode(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = String::with_capacity(b64.len() + b64.len() / 64 + 2 * label.len() + 40);
    out.push_str("-----BEGIN ");
    out.push_str(label);
    out.push_str("-----\n");
    for line in b64.as_bytes().chunks(64) {
        // base64 output is ASCII, so every chunk is valid UTF-8.
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END ");
    out.push_str(label);
    out.push_str("-----\n");
    out
}

/// Certificates as consecutive `CERTIFICATE` blocks.
pub(crate) fn encode_certs<'a>(certs: impl IntoIterator<Item = &'a CertificateDer<'a>>) -> String {
    certs.into_iter().map(|c| encode("CERTIFICATE", c)).collect()
}

/// Decodes the single block of the kind a label names; `None` when absent or malformed.
pub(crate) fn decode_one(text: &str, label: &str) -> Option<Vec<u8>> {
    match label {
        "PRIVATE KEY" => {
            PrivatePkcs8KeyDer::from_pem_slice(text.as_bytes()).ok().map(|k| k.secret_pkcs8_der().to_vec())
        }
        "CERTIFICATE REQUEST" => {
            CertificateSigningRequestDer::from_pem_slice(text.as_bytes()).ok().map(|c| c.to_vec())
        }
        _ => None,
    }
}

/// Every `CERTIFICATE` block in `text`, in order; an error when a block is malformed.
pub(crate) fn decode_certs(text: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    CertificateDer::pem_slice_iter(text.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("malformed PEM: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_wraps_at_64_and_decodes_back() {
        let der: Vec<u8> = (0..=255u8).collect();
        let text = encode("CERTIFICATE", &der);
        assert!(text.lines().all(|l| l.len() <= 64));
        let back = decode_certs(&format!("{text}{text}")).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(back[0].as_ref(), der.as_slice());
    }
}
