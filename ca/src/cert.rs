//! Reading certificates with x509-parser: the facts our own checks need.

use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

/// Why a certificate could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    #[error("not a DER X.509 certificate: {0}")]
    Malformed(String),
    #[error("{0} bytes follow the certificate")]
    TrailingData(usize),
}

/// Parses one DER certificate, refusing trailing bytes (two parsers must never disagree on
/// where a certificate ends).
pub(crate) fn parse(der: &[u8]) -> Result<X509Certificate<'_>, CertError> {
    let (rest, cert) = X509Certificate::from_der(der).map_err(|e| CertError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CertError::TrailingData(rest.len()));
    }
    Ok(cert)
}

/// NotBefore and NotAfter as Unix seconds.
pub(crate) fn validity_secs(cert: &X509Certificate<'_>) -> (i64, i64) {
    let v = cert.validity();
    (v.not_before.timestamp(), v.not_after.timestamp())
}

/// Every URI SAN, in order. A malformed or duplicated SAN extension is an error.
pub(crate) fn uri_sans<'a>(cert: &'a X509Certificate<'_>) -> Result<Vec<&'a str>, CertError> {
    let san = cert.subject_alternative_name().map_err(|e| CertError::Malformed(e.to_string()))?;
    Ok(san
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::URI(u) => Some(*u),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default())
}

/// `Some(path_len)` when the certificate is a CA (`None` inside: no limit), `None` otherwise.
pub(crate) fn ca_path_len(cert: &X509Certificate<'_>) -> Result<Option<Option<u32>>, CertError> {
    let bc = cert.basic_constraints().map_err(|e| CertError::Malformed(e.to_string()))?;
    Ok(match bc {
        Some(ext) if ext.value.ca => Some(ext.value.path_len_constraint),
        _ => None,
    })
}

/// Whether the certificate at `index` of a chain (0 = the CA we sign with) may sign
/// certificates. Ours must say keyCertSign outright; a CA above it may also omit key usage
/// altogether (older tenant roots do, and RFC 5280 path validation accepts it).
pub(crate) fn can_sign_certs(cert: &X509Certificate<'_>, index: usize) -> Result<bool, CertError> {
    let ku = cert.key_usage().map_err(|e| CertError::Malformed(e.to_string()))?;
    Ok(match ku {
        Some(k) => k.value.key_cert_sign(),
        None => index > 0,
    })
}

/// Lowercase hex, for serials and fingerprints.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of the DER: how roots and CAs are named in status and logs.
pub(crate) fn fingerprint(der: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, der).as_ref())
}
