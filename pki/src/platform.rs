//! The platform CA: created once per installation (the first replica wins), sealed like the
//! mesh CAs, and used to issue each replica's TLS server certificate at start-up.

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use trellis_ca::{KeyRing, PlatformCa, SecretKey, owner_aad, seal, unseal};
use trellis_store::{PlatformCaRecord, Store};

use crate::PkiError;
use crate::sealed::{sealed_bytes, sealed_key};

/// The platform root's lifetime.
const PLATFORM_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);
/// A replica's server certificate lifetime (it is reissued at every start).
const SERVER_CERT_TTL: Duration = Duration::from_secs(30 * 24 * 60 * 60);

fn aad() -> Vec<u8> {
    owner_aad(&["platform"])
}

/// A server certificate chain and key for the TLS port, and the root that clients pin.
pub struct ServerIdentity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub root_pem: String,
}

/// Loads the platform CA (creating it if this is the first replica ever) and issues a server
/// certificate for `dns_names` and `ips`.
pub async fn load_or_create_platform(
    store: &Store,
    keyring: &KeyRing,
    dns_names: &[&str],
    ips: &[IpAddr],
) -> Result<ServerIdentity, PkiError> {
    let now = SystemTime::now();
    let record = match store.platform_ca().await? {
        Some(r) => r,
        None => {
            let ca = PlatformCa::generate(PLATFORM_VALIDITY, now).map_err(PkiError::internal)?;
            let sealed = ca.seal_key(keyring, &aad()).map_err(PkiError::internal)?;
            let record =
                PlatformCaRecord { cert_der: ca.root_der().to_vec(), sealed_key: sealed_bytes(&sealed) };
            store.init_platform_ca(&record).await?
        }
    };
    let key = unseal(keyring, &sealed_key(&record.sealed_key)?, &aad()).map_err(PkiError::internal)?;
    let ca = PlatformCa::from_parts(CertificateDer::from(record.cert_der.clone()), key)
        .map_err(PkiError::internal)?;
    let issued = ca.issue_server_cert(dns_names, ips, SERVER_CERT_TTL, now).map_err(PkiError::internal)?;
    Ok(ServerIdentity {
        chain: vec![issued.cert_der.clone(), ca.root_der().clone()],
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(issued.key.expose_pkcs8_der().to_vec())),
        root_pem: ca.root_pem(),
    })
}

/// Re-wraps the platform CA's key under the ring's current KEK.
pub(crate) async fn reseal_platform(store: &Store, keyring: &KeyRing) -> Result<bool, PkiError> {
    let Some(record) = store.platform_ca().await? else { return Ok(false) };
    let sealed = sealed_key(&record.sealed_key)?;
    if !keyring.needs_reseal(&sealed) {
        return Ok(false);
    }
    let key: SecretKey = unseal(keyring, &sealed, &aad()).map_err(PkiError::internal)?;
    let new = seal(keyring, key.expose_pkcs8_der(), &aad()).map_err(PkiError::internal)?;
    store.reseal_platform_ca(&sealed_bytes(&new)).await?;
    Ok(true)
}
