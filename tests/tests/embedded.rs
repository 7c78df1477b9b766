//! The embedded default: `trellis` with no database configured.

use std::path::Path;
use std::time::Duration;

use sqlx::postgres::PgConnectOptions;
use trellis_model::OrgSlug;
use trellis_store::testing::TestDb;
use trellis_store::{APP_ROLE, Store};
use trellis_tests::{Trellis, trellis};

#[tokio::test]
async fn uses_the_local_postgres_creates_the_database_and_keeps_data_across_restarts() {
    let db = TestDb::reserve();
    let mut cmd = trellis();
    cmd.args(["--embedded-database", &db.name, "--http-addr", "127.0.0.1:0"]);
    let t = Trellis::start(cmd).await;
    let (stdout, _) = t.output();
    assert!(stdout.contains(&format!("PostgreSQL at 127.0.0.1:5432, database {}", db.name)), "{stdout}");
    assert_eq!(t.get("/readyz").await.status(), 200);

    let store = db.store().await;
    store.create_org(&OrgSlug::parse("kept").unwrap(), "Kept").await.unwrap();
    store.close().await;
    assert!(t.stop(Duration::from_secs(15)).await.success());

    let mut cmd = trellis();
    cmd.args(["serve", "--embedded-database", &db.name, "--http-addr", "127.0.0.1:0"]);
    let t = Trellis::start(cmd).await;
    assert_eq!(t.get("/readyz").await.status(), 200);
    let store = db.store().await;
    let org = store.org_by_slug(&OrgSlug::parse("kept").unwrap()).await.unwrap();
    assert_eq!(org.map(|o| o.name).as_deref(), Some("Kept"), "the organization did not survive a restart");
    store.close().await;
    assert!(t.stop(Duration::from_secs(15)).await.success());
}

/// Runs as an unprivileged user: PostgreSQL refuses root, so when the tests run as root
/// the private instance runs as the `postgres` system user.
fn as_unprivileged(cmd: &mut tokio::process::Command, dir: &Path) -> tokio::process::Command {
    let root = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"));
    if !root {
        return std::mem::replace(cmd, tokio::process::Command::new("true"));
    }
    let ok = std::process::Command::new("chown").args(["-R", "postgres:postgres"]).arg(dir).status().unwrap();
    assert!(ok.success(), "chown of the data dir to the postgres user failed");
    let std = cmd.as_std();
    let mut wrapped = tokio::process::Command::new("setpriv");
    wrapped
        .args(["--reuid=postgres", "--regid=postgres", "--init-groups", "--"])
        .arg(std.get_program())
        .args(std.get_args());
    for (k, v) in std.get_envs() {
        match v {
            Some(v) => wrapped.env(k, v),
            None => wrapped.env_remove(k),
        };
    }
    wrapped.kill_on_drop(true);
    wrapped
}

struct RemoveDir(std::path::PathBuf);
impl Drop for RemoveDir {
    fn drop(&mut self) {
        // A server left behind by a failed test: SIGQUIT is PostgreSQL's immediate shutdown.
        if let Ok(pid) = std::fs::read_to_string(self.0.join("postgres/postmaster.pid"))
            && let Some(pid) = pid.lines().next()
        {
            let _ = std::process::Command::new("kill").args(["-QUIT", pid]).status();
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test]
async fn runs_a_private_postgres_in_the_data_dir_and_stops_it_on_shutdown() {
    let dir = std::env::temp_dir().join(format!("trellis-e2e-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let _cleanup = RemoveDir(dir.clone());
    let pgdata = dir.join("postgres");

    let serve = |dir: &Path| {
        let mut cmd = trellis();
        cmd.env("TRELLIS_DATA_DIR", dir).env("HOME", dir).args([
            "serve",
            "--embedded-postgres",
            "private",
            "--http-addr",
            "127.0.0.1:0",
        ]);
        as_unprivileged(&mut cmd, dir)
    };

    let t = Trellis::start(serve(&dir)).await;
    let (stdout, _) = t.output();
    assert!(stdout.contains(&format!("private PostgreSQL in {}", pgdata.display())), "{stdout}");
    assert_eq!(t.get("/readyz").await.status(), 200);
    assert!(pgdata.join("postmaster.pid").exists(), "no private server running in {}", pgdata.display());
    // It listens on no TCP port at all, only on a socket inside the data directory.
    let conf = std::fs::read_to_string(pgdata.join("postmaster.pid")).unwrap();
    assert!(conf.contains(&pgdata.join("run").display().to_string()), "{conf}");

    let opts = PgConnectOptions::new_without_pgpass()
        .socket(pgdata.join("run"))
        .username(APP_ROLE)
        .database("trellis");
    let store = Store::connect(opts.clone(), 2).await.unwrap();
    store.create_org(&OrgSlug::parse("private").unwrap(), "Private").await.unwrap();
    store.close().await;

    assert!(t.stop(Duration::from_secs(30)).await.success());
    assert!(!pgdata.join("postmaster.pid").exists(), "the private PostgreSQL was left running");

    let t = Trellis::start(serve(&dir)).await;
    assert_eq!(t.get("/readyz").await.status(), 200);
    let store = Store::connect(opts, 2).await.unwrap();
    assert!(
        store.org_by_slug(&OrgSlug::parse("private").unwrap()).await.unwrap().is_some(),
        "data lost across restart"
    );
    store.close().await;
    assert!(t.stop(Duration::from_secs(30)).await.success());
    assert!(!pgdata.join("postmaster.pid").exists());
}

#[tokio::test]
async fn without_postgres_binaries_it_names_the_package_to_install() {
    let dir = std::env::temp_dir().join(format!("trellis-e2e-{}", uuid::Uuid::new_v4().simple()));
    let _cleanup = RemoveDir(dir.clone());
    let out = trellis()
        .env("TRELLIS_DATA_DIR", &dir)
        .args(["--embedded-postgres", "private", "--postgres-bin-dir", "/nonexistent/bin"])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("apt install postgresql"), "{err}");
    assert!(!dir.join("postgres").exists(), "nothing should be created");
}
