//! Key-encryption keys: where they come from and how they are rotated.
//!
//! `TRELLIS_KEK` holds one key as `<id>:<base64>` (or bare base64, whose id is then derived
//! from the key). Otherwise a file holds one key per line, `<id> <base64>`, the first being
//! current and the others kept only to unseal what they sealed until it is re-wrapped.

use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine;
use secrecy::{ExposeSecret, SecretString};
use trellis_ca::{Kek, KekError, KeyRing};

/// Why the keys could not be loaded or saved.
#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    #[error("TRELLIS_KEK: {0}")]
    Env(KekError),
    #[error("{path}: line {line}: {message}")]
    Line { path: PathBuf, line: usize, message: String },
    #[error("{path}: holds no key")]
    Empty { path: PathBuf },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Kek(#[from] KekError),
    #[error("the system's random number generator failed")]
    Random,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KeyringError + '_ {
    move |source| KeyringError::Io { path: path.to_owned(), source }
}

/// The key ring from `TRELLIS_KEK`.
pub fn from_env(value: &SecretString) -> Result<KeyRing, KeyringError> {
    let text = value.expose_secret().trim();
    let kek = match text.split_once(':') {
        Some((id, b64)) => Kek::from_base64(id, b64),
        None => {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(text)
                .map_err(|_| KeyringError::Env(KekError::BadBase64))?;
            let digest = ring::digest::digest(&ring::digest::SHA256, &raw);
            let id: String = digest.as_ref()[..4].iter().map(|b| format!("{b:02x}")).collect();
            Kek::from_base64(&format!("env-{id}"), text)
        }
    }
    .map_err(KeyringError::Env)?;
    Ok(KeyRing::new(kek))
}

/// The keys in `path`, current first.
pub fn read_file(path: &Path) -> Result<Vec<Kek>, KeyringError> {
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    let mut keys = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |message: String| KeyringError::Line { path: path.to_owned(), line: i + 1, message };
        let (id, b64) = line.split_once(' ').ok_or_else(|| bad("expected `<id> <base64 key>`".into()))?;
        keys.push(Kek::from_base64(id, b64.trim()).map_err(|e| bad(e.to_string()))?);
    }
    if keys.is_empty() {
        return Err(KeyringError::Empty { path: path.to_owned() });
    }
    Ok(keys)
}

/// The key ring in `path`.
pub fn from_file(path: &Path) -> Result<KeyRing, KeyringError> {
    let mut keys = read_file(path)?;
    let current = keys.remove(0);
    Ok(KeyRing::with_previous(current, keys)?)
}

/// Writes `keys` (current first) to `path`, readable by its owner only, replacing it
/// atomically.
pub fn write_file(path: &Path, keys: &[&Kek]) -> Result<(), KeyringError> {
    let mut text = String::from(
        "# Trellis key-encryption keys. The first is current; the others only unseal.\n\
         # Keep this file secret and backed up: without it no CA key can be unsealed.\n",
    );
    for k in keys {
        text.push_str(&format!("{} {}\n", k.id(), k.expose_base64().as_str()));
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let tmp = path.with_extension("tmp");
    {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let mut f = opts.open(&tmp).map_err(io(&tmp))?;
        f.write_all(text.as_bytes()).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
    }
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// A new key with an id that says when it was made, and a random suffix so that two keys
/// made within one second (a file created and rotated at once) never share an id.
pub fn new_kek() -> Result<Kek, KeyringError> {
    use ring::rand::SecureRandom;
    let mut suffix = [0u8; 4];
    ring::rand::SystemRandom::new().fill(&mut suffix).map_err(|_| KeyringError::Random)?;
    let id = format!(
        "kek-{}-{}",
        chrono::Utc::now().format("%Y%m%dT%H%M%S"),
        suffix.iter().map(|b| format!("{b:02x}")).collect::<String>()
    );
    Ok(Kek::generate(&id)?)
}

/// Loads the ring from `path`, creating the file with a new key when it does not exist.
/// Returns whether it was created.
pub fn load_or_create(path: &Path) -> Result<(KeyRing, bool), KeyringError> {
    if path.exists() {
        return Ok((from_file(path)?, false));
    }
    let kek = new_kek()?;
    write_file(path, &[&kek])?;
    Ok((from_file(path)?, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_made_in_the_same_second_have_different_ids() {
        let (a, b) = (new_kek().unwrap(), new_kek().unwrap());
        assert_ne!(a.id(), b.id());
        assert!(a.id().starts_with("kek-"), "{}", a.id());
    }

    #[test]
    fn file_round_trip_keeps_order_and_env_ids_are_stable() {
        let dir = std::env::temp_dir().join(format!("trellis-kek-{}", std::process::id()));
        let path = dir.join("kek");
        let _ = std::fs::remove_file(&path);
        let (ring, created) = load_or_create(&path).unwrap();
        assert!(created);
        let (again, created) = load_or_create(&path).unwrap();
        assert!(!created);
        assert_eq!(ring.current_id(), again.current_id());
        let newer = Kek::generate("kek-newer").unwrap();
        let old = read_file(&path).unwrap();
        write_file(&path, &[&newer, &old[0]]).unwrap();
        assert_eq!(from_file(&path).unwrap().current_id(), "kek-newer");
        std::fs::write(&path, "no-space-here\n").unwrap();
        assert!(matches!(from_file(&path), Err(KeyringError::Line { line: 1, .. })));
        std::fs::remove_dir_all(&dir).unwrap();

        let b64 = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        let a = from_env(&SecretString::from(b64.clone())).unwrap();
        let b = from_env(&SecretString::from(b64)).unwrap();
        assert_eq!(a.current_id(), b.current_id());
        assert!(a.current_id().starts_with("env-"));
        assert!(from_env(&SecretString::from("k1:short".to_owned())).is_err());
    }
}
