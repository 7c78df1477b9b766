//! The last configuration the agent accepted, kept beside its certificates (0600, replaced
//! atomically) so that an agent restarted while the control plane is unreachable serves what
//! it served before. Only accepted responses are ever written: a NACKed one never is.

use std::path::Path;

use anyhow::{Context, anyhow};
use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryResponse;
use prost::Message;

use crate::state::{Config, type_urls};

/// The file, under the certificate directory.
pub const LAST_GOOD_FILE: &str = "last-good-config.pb";
/// Largest file read back.
const MAX_FILE: u64 = 64 * 1024 * 1024;

/// Writes what `cfg` holds: one length-delimited `DeltaDiscoveryResponse` per type.
pub fn save(dir: &Path, cfg: &Config) -> anyhow::Result<()> {
    let mut buf = Vec::new();
    for (type_url, resources) in &cfg.raw {
        let resp = DeltaDiscoveryResponse {
            type_url: type_url.clone(),
            resources: resources.values().cloned().collect(),
            ..Default::default()
        };
        resp.encode_length_delimited(&mut buf)?;
    }
    write_atomic(dir, LAST_GOOD_FILE, &buf, 0o600)
}

/// What [`save`] wrote, in subscription order (clusters before listeners); nothing when
/// there is no file.
pub fn load(dir: &Path) -> anyhow::Result<Vec<DeltaDiscoveryResponse>> {
    let path = dir.join(LAST_GOOD_FILE);
    let Ok(meta) = std::fs::metadata(&path) else { return Ok(Vec::new()) };
    if meta.len() > MAX_FILE {
        return Err(anyhow!("{} is larger than {MAX_FILE} bytes", path.display()));
    }
    let bytes = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut rest = bytes.as_slice();
    let mut out = Vec::new();
    while !rest.is_empty() {
        out.push(
            DeltaDiscoveryResponse::decode_length_delimited(&mut rest)
                .with_context(|| format!("{} is damaged", path.display()))?,
        );
    }
    let order = type_urls();
    out.sort_by_key(|r| order.iter().position(|t| *t == r.type_url).unwrap_or(order.len()));
    Ok(out)
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
