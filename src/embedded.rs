//! The embedded default: where the database comes from when none is configured.
//!
//! 1. The PostgreSQL at 127.0.0.1:5432, when it answers: the database and the roles are
//!    created if absent.
//! 2. Otherwise a private PostgreSQL in `<data dir>/postgres`, initialized on first start
//!    from the server binaries on this machine, listening only on a Unix socket inside the
//!    data directory, and stopped when Trellis stops.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use sqlx::postgres::PgConnectOptions;
use tokio::process::Command;
use trellis_store::{DbRoles, OWNER_ROLE, ensure_database};

use crate::config::{EmbeddedMode, Global};

/// A database chosen by the embedded default, and the private server to stop, if any.
pub struct Embedded {
    pub roles: DbRoles,
    pub private: Option<PrivatePostgres>,
    /// What to tell the operator about where the data lives.
    pub description: String,
}

/// Resolves the embedded default.
pub async fn resolve(global: &Global, data_dir: &Path) -> anyhow::Result<Embedded> {
    let use_system = match global.embedded_postgres {
        EmbeddedMode::System => true,
        EmbeddedMode::Private => false,
        EmbeddedMode::Auto => answers(global.embedded_postgres_addr).await,
    };
    if use_system {
        let addr = global.embedded_postgres_addr;
        let admin = PgConnectOptions::new_without_pgpass()
            .host(&addr.ip().to_string())
            .port(addr.port())
            .username(&global.embedded_postgres_user)
            .database("postgres");
        ensure_database(&admin, &global.embedded_database).await.with_context(|| {
            format!(
                "the embedded default found PostgreSQL at {addr} but could not create the database \
                 {:?} as {:?}; set TRELLIS_DATABASE_URL to a database you own, or \
                 TRELLIS_EMBEDDED_POSTGRES_USER to a superuser",
                global.embedded_database, global.embedded_postgres_user
            )
        })?;
        let owner = admin.database(&global.embedded_database).username(OWNER_ROLE);
        return Ok(Embedded {
            roles: DbRoles::from_owner(owner, None),
            private: None,
            description: format!("PostgreSQL at {addr}, database {}", global.embedded_database),
        });
    }
    let private =
        PrivatePostgres::start(&data_dir.join("postgres"), global.postgres_bin_dir.as_deref()).await?;
    let admin = private.admin_options(&global.embedded_postgres_user);
    ensure_database(&admin, &global.embedded_database).await?;
    let owner = admin.database(&global.embedded_database).username(OWNER_ROLE);
    let description = format!("private PostgreSQL in {}", private.data.display());
    Ok(Embedded { roles: DbRoles::from_owner(owner, None), private: Some(private), description })
}

async fn answers(addr: std::net::SocketAddr) -> bool {
    matches!(
        tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(addr)).await,
        Ok(Ok(_))
    )
}

/// A PostgreSQL server that Trellis started and will stop.
pub struct PrivatePostgres {
    bin: PathBuf,
    data: PathBuf,
    socket_dir: PathBuf,
    started_here: bool,
}

/// Longest Unix socket path PostgreSQL accepts (sun_path is 108 bytes with the NUL).
const MAX_SOCKET_PATH: usize = 107;

impl PrivatePostgres {
    async fn start(data: &Path, bin_dir: Option<&Path>) -> anyhow::Result<Self> {
        let bin = find_server_binaries(bin_dir).context(
            "no database is configured, nothing answers on 127.0.0.1:5432, and no PostgreSQL server \
             binaries (initdb, pg_ctl) were found for a private instance. Install PostgreSQL \
             (Debian/Ubuntu: `apt install postgresql`; Fedora: `dnf install postgresql-server`; \
             macOS: `brew install postgresql`) or set TRELLIS_DATABASE_URL",
        )?;
        if std::fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(1) == 0 {
            bail!(
                "PostgreSQL refuses to run as root, so the private instance cannot start: run \
                 trellis as an ordinary user, start a PostgreSQL on 127.0.0.1:5432, or set \
                 TRELLIS_DATABASE_URL"
            );
        }
        let data = std::path::absolute(data)?;
        let socket_dir = data.join("run");
        if socket_dir.join(".s.PGSQL.5432").as_os_str().len() > MAX_SOCKET_PATH {
            bail!(
                "the data directory path {} is too long for PostgreSQL's Unix socket; choose a \
                 shorter TRELLIS_DATA_DIR",
                data.display()
            );
        }
        if !data.join("PG_VERSION").exists() {
            std::fs::create_dir_all(&data)?;
            std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700))?;
            tracing::info!(dir = %data.display(), "initializing a private PostgreSQL");
            run(Command::new(bin.join("initdb")).arg("-D").arg(&data).args([
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
            ]))
            .await?;
        }
        std::fs::create_dir_all(&socket_dir)?;
        let mut pg = PrivatePostgres { bin, data, socket_dir, started_here: false };
        if pg.status().await {
            tracing::info!(dir = %pg.data.display(), "reusing the private PostgreSQL already running");
        } else {
            tracing::info!(dir = %pg.data.display(), "starting the private PostgreSQL");
            // No TCP at all: only a socket in a directory that only this user can enter.
            let opts = format!("-c listen_addresses='' -k {}", pg.socket_dir.display());
            run(Command::new(pg.bin.join("pg_ctl"))
                .arg("-D")
                .arg(&pg.data)
                .arg("-l")
                .arg(pg.data.join("postgres.log"))
                .args(["-w", "-t", "60", "-o", &opts, "start"]))
            .await?;
            pg.started_here = true;
        }
        Ok(pg)
    }

    fn admin_options(&self, user: &str) -> PgConnectOptions {
        PgConnectOptions::new_without_pgpass().socket(&self.socket_dir).username(user).database("postgres")
    }

    async fn status(&self) -> bool {
        Command::new(self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(&self.data)
            .arg("status")
            .stdout(std::process::Stdio::null())
            .status()
            .await
            .map(|s| s.success())
            .unwrap_or(false)
    }

    /// Stops the server if this process started it (a fast shutdown: clients are gone by now).
    pub async fn stop(self) -> anyhow::Result<()> {
        if !self.started_here {
            return Ok(());
        }
        tracing::info!(dir = %self.data.display(), "stopping the private PostgreSQL");
        run(Command::new(self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "fast", "-w", "stop"]))
        .await
    }
}

/// Runs a command to completion, failing with its output when it fails.
async fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd.output().await.with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// The directory holding `initdb` and `pg_ctl`: the configured one, else from `$PATH`, else the newest Debian-style
/// `/usr/lib/postgresql/<version>/bin`.
fn find_server_binaries(configured: Option<&Path>) -> Option<PathBuf> {
    let has_both = |d: &Path| d.join("initdb").is_file() && d.join("pg_ctl").is_file();
    if let Some(d) = configured {
        return has_both(d).then(|| d.to_owned());
    }
    if let Some(path) = std::env::var_os("PATH")
        && let Some(d) = std::env::split_paths(&path).find(|d| has_both(d))
    {
        return Some(d);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let v = e.file_name().to_str()?.parse().ok()?;
            Some((v, e.path().join("bin")))
        })
        .filter(|(_, d)| has_both(d))
        .collect();
    versions.sort();
    versions.pop().map(|(_, d)| d)
}
