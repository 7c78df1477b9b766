//! The workload identity: a P-256 key made here (it never leaves the machine), a CSR to the
//! control plane's identity service — with the join token the first time, with the current
//! SVID over mTLS after that — and the files co-located clients read, written atomically.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context, anyhow};
use arc_swap::ArcSwap;
use rand::Rng;
use trellis_ca::TrustBundle;
use trellis_proto::identity::IssueSvidRequest;
use trellis_proto::identity::identity_client::IdentityClient;
use trellis_xds::contract::{BUNDLE_FILE, CERT_FILE, KEY_FILE, PLATFORM_CA_FILE};
use zeroize::Zeroizing;

use crate::cli::JoinToken;
use crate::control::{ControlPlane, explain};
use crate::persist::write_atomic;
use crate::svid::Svid;

/// Longest wait before a prompt renewal: a fleet that hears of an activation together spreads
/// its renewals over this much time.
pub const PROMPT_RENEWAL: Duration = Duration::from_secs(3);

/// When to renew an SVID received at `received` and valid until `not_after`, given `jitter`
/// drawn uniformly from [0, 1]. Normally at half the lifetime left when it was received, moved
/// by up to a tenth of it either way, so that a fleet issued together does not renew together.
/// But when `stale` (the mesh's bundle names another root as the one that signs now, after a
/// rotation's activation), at once: within [`PROMPT_RENEWAL`] of `now`, so that the old root
/// can be retired within seconds instead of half a lifetime.
pub fn renew_at(
    received: SystemTime,
    not_after: SystemTime,
    stale: bool,
    now: SystemTime,
    jitter: f64,
) -> SystemTime {
    let jitter = jitter.clamp(0.0, 1.0);
    let regular =
        received + not_after.duration_since(received).unwrap_or_default().mul_f64(0.4 + 0.2 * jitter);
    match stale {
        true => regular.min(now + PROMPT_RENEWAL.mul_f64(jitter)),
        false => regular,
    }
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

/// The mesh's trust bundle as last received (SDS), and a receiver that ticks when it may
/// have changed: what tells renewal that another root signs now.
pub struct BundleWatch {
    pub current: Box<dyn Fn() -> Option<Arc<TrustBundle>> + Send + Sync>,
    pub changed: tokio::sync::watch::Receiver<u64>,
}

/// Renews the SVID over mTLS at about half its lifetime, or within seconds when the mesh's
/// bundle names another root as the one that signs now; retries with backoff, forever.
pub async fn renew_forever(identity: Arc<Identity>, cp: ControlPlane, files: Files, mut bundle: BundleWatch) {
    let mut backoff = Backoff::default();
    // The first root a prompt renewal was made for: if the control plane still signs under
    // another, the regular schedule takes over instead of renewing again and again.
    let mut prompted_for: Option<String> = None;
    // When the current first root was first seen not to have signed the SVID: the prompt
    // renewal is timed from then, so that a stream of other updates cannot postpone it.
    let mut stale_since: Option<(String, SystemTime)> = None;
    let jitter = rand::rng().random_range(0.0..=1.0);
    loop {
        let current = identity.current();
        let now = SystemTime::now();
        let first = (bundle.current)();
        let first_fp = first.as_ref().and_then(|b| b.roots().first()).map(|r| r.fingerprint().to_owned());
        let stale = first.as_ref().and_then(|b| current.under_first_root(b, now)) == Some(false)
            && prompted_for != first_fp;
        let since = match (&stale_since, &first_fp) {
            (Some((fp, t)), Some(first)) if fp == first => *t,
            _ => {
                stale_since = first_fp.clone().map(|fp| (fp, now));
                now
            }
        };
        let at = renew_at(current.received, current.not_after, stale, since, jitter);
        let wait = at.duration_since(now).unwrap_or_default();
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            // The bundle changed: decide again.
            changed = bundle.changed.changed() => {
                if changed.is_err() {
                    // No more configuration will come: keep the regular schedule only.
                    bundle.changed = tokio::sync::watch::channel(0).1;
                }
                continue;
            }
        }
        if stale {
            tracing::info!(id = %current.id, "the mesh's bundle names another signing root: renewing the SVID now");
            prompted_for = first_fp;
        }
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
    fn renewal_is_due_at_half_the_lifetime_left_give_or_take_a_tenth() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let day = Duration::from_secs(24 * 3600);
        let at = |jitter| renew_at(t0, t0 + day, false, t0, jitter);
        assert_eq!(at(0.5), t0 + day / 2);
        assert_eq!(at(0.0), t0 + day.mul_f64(0.4));
        assert_eq!(at(1.0), t0 + day.mul_f64(0.6));
        assert_eq!(at(7.0), t0 + day.mul_f64(0.6), "jitter is bounded");
        // Read back at start with six hours left: half of what is left.
        let later = t0 + day - day / 4;
        assert_eq!(renew_at(later, t0 + day, false, later, 0.5), later + day / 8);
    }

    #[test]
    fn an_svid_the_signing_root_did_not_sign_is_renewed_within_seconds() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let day = Duration::from_secs(24 * 3600);
        let now = t0 + Duration::from_secs(3600);
        for jitter in [0.0, 0.3, 1.0] {
            let at = renew_at(t0, t0 + day, true, now, jitter);
            assert!(at >= now && at <= now + PROMPT_RENEWAL, "{jitter}: {at:?}");
        }
        assert_ne!(
            renew_at(t0, t0 + day, true, now, 0.2),
            renew_at(t0, t0 + day, true, now, 0.8),
            "jittered"
        );
        // Never later than the regular time: one already due stays due.
        let late = t0 + day;
        assert_eq!(renew_at(t0, t0 + day, true, late, 1.0), t0 + day.mul_f64(0.6));
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
