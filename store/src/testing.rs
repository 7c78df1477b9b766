//! Test support: a fresh database per test, migrated, dropped when the test ends.

use std::str::FromStr;

use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection};

use crate::{DbRoles, OWNER_ROLE, Store, ensure_database, migrate, provision::quote_ident};

/// Where tests find a PostgreSQL superuser; override with `TRELLIS_TEST_ADMIN_URL`.
pub const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// The admin URL for tests.
pub fn admin_url() -> String {
    std::env::var("TRELLIS_TEST_ADMIN_URL").unwrap_or_else(|_| DEFAULT_ADMIN_URL.to_owned())
}

/// A migrated database of its own for one test. Dropped (with any connection still open)
/// when the value is dropped, so tests run in parallel and leave nothing behind.
pub struct TestDb {
    pub name: String,
    admin_url: String,
    /// Connection options of the owner and of the server role.
    pub roles: DbRoles,
}

impl TestDb {
    /// Creates and migrates a new database. Panics with a message naming PostgreSQL when
    /// none answers: a test that needs it must fail, not skip.
    pub async fn create() -> TestDb {
        let admin_url = admin_url();
        let admin =
            PgConnectOptions::from_str(&admin_url).expect("TRELLIS_TEST_ADMIN_URL must be a postgres:// URL");
        let name = format!("trellis_test_{}", uuid::Uuid::new_v4().simple());
        if let Err(e) = ensure_database(&admin, &name).await {
            panic!(
                "tests need PostgreSQL with a superuser at {admin_url} (set TRELLIS_TEST_ADMIN_URL, \
                 or start it: pg_ctlcluster --skip-systemctl-redirect 15 main start): {e}"
            );
        }
        let owner = admin.clone().database(&name).username(OWNER_ROLE).password("");
        let roles = DbRoles::from_owner(owner, None);
        let db = TestDb { name, admin_url, roles };
        migrate(&db.roles.owner).await.expect("migrations apply to a fresh database");
        db
    }

    /// Names a database that does not exist yet, for a test in which `trellis` itself
    /// creates it (the embedded default); it is dropped like any other.
    pub fn reserve() -> TestDb {
        let admin_url = admin_url();
        let admin =
            PgConnectOptions::from_str(&admin_url).expect("TRELLIS_TEST_ADMIN_URL must be a postgres:// URL");
        let name = format!("trellis_test_{}", uuid::Uuid::new_v4().simple());
        let owner = admin.database(&name).username(OWNER_ROLE).password("");
        TestDb { roles: DbRoles::from_owner(owner, None), name, admin_url }
    }

    /// A store connected as the server role.
    pub async fn store(&self) -> Store {
        Store::connect(self.roles.app.clone(), 8).await.expect("connect as the server role")
    }

    /// A superuser connection to this test's database (for catalog checks and for
    /// killing backends).
    pub async fn admin_conn(&self) -> PgConnection {
        let opts = PgConnectOptions::from_str(&self.admin_url).expect("admin url").database(&self.name);
        PgConnection::connect_with(&opts).await.expect("admin connection")
    }

    /// A connection as the server role, outside any [`Store`] (to prove what RLS allows).
    pub async fn app_conn(&self) -> PgConnection {
        PgConnection::connect_with(&self.roles.app).await.expect("server role connection")
    }

    /// URL of this database for the schema owner, as a `trellis` process would be given.
    pub fn owner_url(&self) -> String {
        let admin = url_parts(&self.admin_url);
        format!("postgres://{OWNER_ROLE}@{}/{}", admin, self.name)
    }
}

/// `host:port` of a postgres URL.
fn url_parts(url: &str) -> String {
    let opts = PgConnectOptions::from_str(url).expect("admin url");
    format!("{}:{}", opts.get_host(), opts.get_port())
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        // Drop runs inside the test's runtime, which cannot be blocked on; use a thread.
        let dropper = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async move {
                let opts = PgConnectOptions::from_str(&admin_url).expect("admin url");
                let mut conn = PgConnection::connect_with(&opts).await.expect("admin connection");
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    quote_ident(&name)
                )))
                .execute(&mut conn)
                .await
                .expect("drop test database");
            });
        });
        if dropper.join().is_err() && !std::thread::panicking() {
            panic!("could not drop test database {}", self.name);
        }
    }
}
