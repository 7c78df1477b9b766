//! The workload identity: a P-256 key made here (it never leaves the machine), a CSR to the
//! control plane's identity service — with the join token the first time, with the current
//! SVID over mTLS after that — and the files co-located clients read, written atomically.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context, anyhow};
use arc_swap::ArcSwap;
use rand::Rng;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use trellis_ca::{RootCert, SpiffeId, TrustBundle, claimed_leaf};
use trellis_proto::identity::IssueSvidRequest;
use trellis_proto::identity::identity_client::IdentityClient;
use trellis_xds::contract::{BUNDLE_FILE, CERT_FILE, KEY_FILE, PLATFORM_CA_FILE};
use zeroize::Zeroizing;

use crate::cli::JoinToken;
use crate::control::{ControlPlane, explain, pem_certs};

/// An SVID with its key and the mesh's trust bundle.
pub struct Svid {
    key_pem: Zeroizing<String>,
    pub chain_pem: String,
    pub bundle_pem: String,
    pub id: SpiffeId,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl Svid {
    /// Reads the leaf's identity and validity; checks that the key parses.
    pub fn from_pem(
        key_pem: Zeroizing<String>,
        chain_pem: String,
        bundle_pem: String,
    ) -> anyhow::Result<Svid> {
        let chain = pem_certs(&chain_pem)?;
        let leaf = chain.first().ok_or_else(|| anyhow!("no certificate in the chain"))?;
        let claimed = claimed_leaf(leaf).map_err(|e| anyhow!("not an SVID: {e}"))?;
        let svid = Svid {
            key_pem,
            chain_pem,
            bundle_pem,
            id: claimed.id,
            not_before: claimed.not_before,
            not_after: claimed.not_after,
        };
        use rustls::pki_types::pem::PemObject;
        PrivateKeyDer::from_pem_slice(svid.key_pem.as_bytes())
            .map_err(|e| anyhow!("bad private key: {e}"))?;
        svid.bundle()?;
        Ok(svid)
    }

    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        pem_certs(&self.chain_pem).unwrap_or_default()
    }

    pub fn key(&self) -> PrivateKeyDer<'static> {
        use rustls::pki_types::pem::PemObject;
        PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).expect("checked in from_pem")
    }

    /// The mesh's roots as issued with this SVID.
    pub fn bundle(&self) -> anyhow::Result<TrustBundle> {
        bundle_from_pem(&self.id, &self.bundle_pem)
    }

    /// When to renew: at half the lifetime, moved by `jitter` (a fraction of the lifetime,
    /// within ±0.1) so that a fleet issued together does not renew together.
    pub fn renew_at(&self, jitter: f64) -> SystemTime {
        let life = self.not_after.duration_since(self.not_before).unwrap_or_default();
        let frac = 0.5 + jitter.clamp(-0.1, 0.1);
        self.not_before + life.mul_f64(frac)
    }
}

/// The roots in `pem`, as the trust bundle of `id`'s trust domain.
pub fn bundle_from_pem(id: &SpiffeId, pem: &str) -> anyhow::Result<TrustBundle> {
    let td = id.trust_domain();
    let roots = pem_certs(pem)?
        .into_iter()
        .map(|c| RootCert::parse(&td, c).map_err(|e| anyhow!("trust bundle: {e}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if roots.is_empty() {
        return Err(anyhow!("trust bundle: no root certificate"));
    }
    TrustBundle::new(&td, roots, 0).map_err(|e| anyhow!("trust bundle: {e}"))
}

/// The current SVID, swapped on renewal; `changed` ticks after each swap.
pub struct Identity {
    current: ArcSwap<Svid>,
    pub changed: tokio::sync::watch::Sender<u64>,
}

impl Identity {
    pub fn current(&self) -> Arc<Svid> {
        self.current.load_full()
    }

    fn replace(&self, svid: Svid) {
        self.current.store(Arc::new(svid));
        self.changed.send_modify(|n| *n += 1);
    }
}

/// The certificate directory and the platform root that goes in it.
pub struct Files {
    pub dir: PathBuf,
    pub platform_root_pem: String,
}

impl Files {
    fn load(&self) -> Option<Svid> {
        let read = |f: &str| std::fs::read_to_string(self.dir.join(f)).ok();
        let svid =
            Svid::from_pem(Zeroizing::new(read(KEY_FILE)?), read(CERT_FILE)?, read(BUNDLE_FILE)?).ok()?;
        (svid.not_after > SystemTime::now() + Duration::from_secs(60)).then_some(svid)
    }

    fn store(&self, svid: &Svid) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("cannot create {}", self.dir.display()))?;
        write_atomic(&self.dir, PLATFORM_CA_FILE, self.platform_root_pem.as_bytes(), 0o644)?;
        write_atomic(&self.dir, BUNDLE_FILE, svid.bundle_pem.as_bytes(), 0o644)?;
        // The key before the certificate: a reader that sees the new certificate finds its key.
        write_atomic(&self.dir, KEY_FILE, svid.key_pem.as_bytes(), 0o600)?;
        write_atomic(&self.dir, CERT_FILE, svid.chain_pem.as_bytes(), 0o644)
    }
}

/// Writes `dir/name` by writing a temporary file beside it and renaming it over, so that a
/// reader sees the old file or the new one, never half of one.
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = dir.join(format!(".{name}.tmp"));
    let target = dir.join(name);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, &target).with_context(|| format!("cannot replace {}", target.display()))
}

async fn issue(cp: &ControlPlane, client: Option<&Svid>, token: Option<&JoinToken>) -> anyhow::Result<Svid> {
    let (key, csr) = trellis_ca::workload_key_and_csr().map_err(|e| anyhow!("cannot make a key: {e}"))?;
    let channel = cp.channel(client)?;
    let req = IssueSvidRequest {
        csr: csr.into_bytes(),
        join_token: token.map(|t| t.0.as_str().to_owned()).unwrap_or_default(),
    };
    let resp =
        IdentityClient::new(channel).issue_svid(req).await.map_err(|s| anyhow!(explain(&cp.addr, &s)))?;
    let r = resp.into_inner();
    Svid::from_pem(key.expose_pkcs8_pem(), r.certificate_chain_pem, r.trust_bundle_pem)
        .context("the control plane sent an unusable certificate")
}

/// The SVID in the certificate directory if it is still valid, else a new one for the join
/// token (read only then: once an SVID exists the token is not needed); either way written
/// to the directory.
pub async fn obtain(
    cp: &ControlPlane,
    files: &Files,
    token: impl FnOnce() -> anyhow::Result<Option<JoinToken>>,
) -> anyhow::Result<Identity> {
    let svid = match files.load() {
        Some(svid) => {
            tracing::info!(id = %svid.id, "using the SVID in {}", files.dir.display());
            svid
        }
        None => {
            let token = token()?.ok_or_else(|| {
                anyhow!(
                    "{} holds no valid SVID and no join token was given: pass --join-token-file or set TRELLIS_JOIN_TOKEN",
                    files.dir.display()
                )
            })?;
            let svid = issue(cp, None, Some(&token)).await.context("joining the mesh")?;
            tracing::info!(id = %svid.id, "joined the mesh");
            svid
        }
    };
    files.store(&svid)?;
    Ok(Identity { current: ArcSwap::from_pointee(svid), changed: tokio::sync::watch::channel(0).0 })
}

/// Renews the SVID over mTLS at about half its lifetime, retrying with backoff, forever.
pub async fn renew_forever(identity: Arc<Identity>, cp: ControlPlane, files: Files) {
    let mut backoff = Backoff::default();
    loop {
        let current = identity.current();
        let at = current.renew_at(rand::rng().random_range(-0.1..=0.1));
        let wait = at.duration_since(SystemTime::now()).unwrap_or_default();
        tokio::time::sleep(wait).await;
        loop {
            let renewed = issue(&cp, Some(&current), None).await.and_then(|s| files.store(&s).map(|()| s));
            match renewed {
                Ok(svid) => {
                    tracing::info!(id = %svid.id, expires = ?svid.not_after, "SVID renewed");
                    identity.replace(svid);
                    backoff = Backoff::default();
                    break;
                }
                Err(e) => {
                    let d = backoff.next();
                    tracing::warn!(error = %format!("{e:#}"), retry_in = ?d, "SVID renewal failed");
                    tokio::time::sleep(d).await;
                }
            }
        }
    }
}

/// Exponential backoff with full jitter, from 0.5 s up to 30 s.
#[derive(Default)]
pub struct Backoff {
    attempt: u32,
}

impl Backoff {
    pub fn next(&mut self) -> Duration {
        let cap =
            Duration::from_millis(500).saturating_mul(1 << self.attempt.min(6)).min(Duration::from_secs(30));
        self.attempt += 1;
        cap.mul_f64(rand::rng().random_range(0.5..=1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_replace_files_whole_and_keep_the_key_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("trellis-agent-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        write_atomic(&dir, "key.pem", b"one", 0o600).unwrap();
        write_atomic(&dir, "key.pem", b"two", 0o600).unwrap();
        assert_eq!(std::fs::read(dir.join("key.pem")).unwrap(), b"two");
        assert_eq!(std::fs::metadata(dir.join("key.pem")).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(!dir.join(".key.pem.tmp").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn renewal_is_due_at_half_the_lifetime_give_or_take_a_tenth() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let day = Duration::from_secs(24 * 3600);
        let svid = Svid {
            key_pem: Zeroizing::new(String::new()),
            chain_pem: String::new(),
            bundle_pem: String::new(),
            id: SpiffeId::parse("spiffe://td.example/ns/m/sa/s").unwrap(),
            not_before: t0,
            not_after: t0 + day,
        };
        assert_eq!(svid.renew_at(0.0), t0 + day / 2);
        assert_eq!(svid.renew_at(-0.1), t0 + day.mul_f64(0.4));
        assert_eq!(svid.renew_at(0.7), t0 + day.mul_f64(0.6), "jitter is bounded");
    }

    #[test]
    fn backoff_grows_and_is_bounded() {
        let mut b = Backoff::default();
        let first = b.next();
        assert!(first <= Duration::from_millis(500));
        let late = (0..20).map(|_| b.next()).last().unwrap();
        assert!(late >= Duration::from_secs(15) && late <= Duration::from_secs(30), "{late:?}");
    }
}
