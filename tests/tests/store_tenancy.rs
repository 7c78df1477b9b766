//! Row-level security, proven as the server role against real PostgreSQL.

use serde_json::json;
use sqlx::{Connection, PgConnection, Row};
use trellis_model::{MeshName, OrgId, OrgSlug, ResourceName, Role};
use trellis_store::testing::TestDb;
use trellis_store::{APP_ROLE, AuditEvent, Precondition, Registration, Store, StoredResponse};

/// Tables that have an `org_id` column but lack enabled *and* forced row security.
async fn tables_missing_rls(conn: &mut PgConnection) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_class c \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'org_id' AND NOT a.attisdropped \
         WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') \
           AND NOT (c.relrowsecurity AND c.relforcerowsecurity) \
         ORDER BY 1",
    )
    .fetch_all(conn)
    .await
    .unwrap()
}

/// Directories: tables with an `org_id` column that the server role resolves one exact key
/// in, through a function, and cannot read at all. They show nothing without a tenant like
/// every other table (`without_a_tenant_every_tenant_table_is_empty`); their rules are
/// tested on their own.
const DIRECTORIES: [&str; 1] = ["trust_domain_directory"];

/// Every table with an `org_id` column; a partition is read through its parent (and has
/// row-level security of its own: `tables_missing_rls` sees partitions too).
async fn org_tables(conn: &mut PgConnection) -> Vec<String> {
    tenant_tables_except(conn, &[]).await
}

/// Every table with an `org_id` column, except the directories.
async fn tenant_tables(conn: &mut PgConnection) -> Vec<String> {
    tenant_tables_except(conn, &DIRECTORIES).await
}

async fn tenant_tables_except(conn: &mut PgConnection, except: &[&str]) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_class c \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'org_id' AND NOT a.attisdropped \
         WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND NOT c.relispartition \
           AND c.relname <> ALL($1) ORDER BY 1",
    )
    .bind(except)
    .fetch_all(conn)
    .await
    .unwrap()
}

struct Seeded {
    a: OrgId,
    b: OrgId,
}

/// Two organizations with a row in every tenant table each.
async fn seed(db: &TestDb, store: &Store) -> Seeded {
    let mut ids = Vec::new();
    for slug in ["org-a", "org-b"] {
        let org = store.create_org(&OrgSlug::parse(slug).unwrap(), slug).await.unwrap();
        let mut tx = store.tenant(org.id).await.unwrap();
        let mesh = tx
            .put_mesh(
                &MeshName::parse("prod").unwrap(),
                &format!("prod.{slug}.test"),
                &json!({}),
                &json!({}),
                Precondition::Unconditional,
            )
            .await
            .unwrap()
            .value;
        tx.put_resource(
            mesh.id,
            "Service",
            &ResourceName::parse("web").unwrap(),
            &json!({"ports": [80]}),
            &json!({}),
            Precondition::Unconditional,
        )
        .await
        .unwrap();
        tx.record_audit(&AuditEvent {
            actor: "test".into(),
            action: "mesh.create".into(),
            target: "prod".into(),
            request_id: None,
            details: json!({}),
        })
        .await
        .unwrap();
        tx.create_token("ci", Role::Editor, &[slug.len() as u8; 32], "test", None).await.unwrap();
        let dp = tx
            .register_dataplane(
                mesh.id,
                &Registration {
                    service: "web".into(),
                    node_id: "web-1".into(),
                    client: "grpc".into(),
                    address: Some("10.0.0.1".parse().unwrap()),
                    ports: vec![80],
                    tags: json!({}),
                    zone: String::new(),
                    replica: "r1".into(),
                },
            )
            .await
            .unwrap();
        // Sent the caller side of one service: one row of each fleet count.
        tx.dataplane_reach(dp.id, &["web".to_owned()], false).await.unwrap();
        tx.ledger_sent(dp.id, "type.googleapis.com/envoy.config.cluster.v3.Cluster", "v1", "1", 1)
            .await
            .unwrap();
        let sealed =
            trellis_store::SealedBytes { kek_id: "k".into(), nonce: vec![0; 12], ciphertext: vec![1; 48] };
        let ca = tx
            .insert_ca(
                mesh.id,
                &trellis_store::NewCa {
                    origin: trellis_store::CaOrigin::Generated,
                    state: trellis_store::CaState::Active,
                    chain: vec![vec![0x30]],
                    root_fingerprint: Some("fp".into()),
                    not_after: None,
                    csr_pem: None,
                    sealed_key: sealed,
                },
            )
            .await
            .unwrap();
        let recorded = tx
            .record_leaves_if_active(&[(
                mesh.id,
                trellis_store::IssuedLeaf {
                    serial: format!("{slug}-1"),
                    ca_id: ca.id,
                    spiffe_id: "spiffe://x/ns/prod/sa/web".into(),
                    not_after: chrono::Utc::now() + chrono::Duration::hours(1),
                    service: "web".into(),
                    tags: json!({}),
                    join_token: None,
                    replaces: None,
                },
            )])
            .await
            .unwrap();
        assert_eq!(recorded, vec![trellis_store::LeafOutcome::Recorded], "the active CA's leaf is recorded");
        tx.record_xds_config(
            mesh.id,
            "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            "v1",
            &json!([]),
        )
        .await
        .unwrap();
        tx.create_join_token(
            mesh.id,
            &[slug.as_bytes()[4]; 32],
            "web",
            &json!({}),
            false,
            "test",
            chrono::Utc::now() + chrono::Duration::hours(1),
        )
        .await
        .unwrap();
        tx.record_edges(&[trellis_store::EdgeSample {
            mesh: mesh.id,
            bucket_start: chrono::Utc::now(),
            key: trellis_model::telemetry::EdgeKey {
                source: ResourceName::parse("web").unwrap(),
                destination: ResourceName::parse("web").unwrap(),
                destination_subset: Default::default(),
                route: None,
                class: trellis_model::telemetry::ResponseClass::Success,
            },
            counts: trellis_model::telemetry::EdgeCounts { requests: 1, successes: 1, ..Default::default() },
        }])
        .await
        .unwrap();
        tx.record_access_log(&[trellis_store::AccessLogRecord {
            mesh_id: mesh.id.as_uuid(),
            logged_at: chrono::Utc::now(),
            reporter: "web".into(),
            direction: "inbound".into(),
            protocol: "tcp".into(),
            outcome: "error".into(),
            source_service: None,
            source_identity: None,
            source_address: None,
            destination_service: None,
            destination_identity: None,
            method: None,
            authority: None,
            path: None,
            status: None,
            response_flags: String::new(),
            response_details: String::new(),
            rbac_policy: None,
            audit_policy: None,
            route: None,
            upstream_cluster: None,
            duration_ms: None,
            bytes_received: None,
            bytes_sent: None,
        }])
        .await
        .unwrap();
        tx.store_response("key-1", &StoredResponse { fingerprint: vec![1], status: 201, body: json!({}) })
            .await
            .unwrap();
        tx.commit().await.unwrap();
        ids.push(org.id);
    }
    // Memberships need users, which only the accounts flow creates; insert them directly,
    // through the same RLS, as the server role.
    let mut conn = db.app_conn().await;
    for org in &ids {
        let mut tx = conn.begin().await.unwrap();
        sqlx::query("SELECT set_config('app.org_id', $1, true)")
            .bind(org.to_string())
            .execute(&mut *tx)
            .await
            .unwrap();
        let user: uuid::Uuid = sqlx::query_scalar(
            "INSERT INTO users (oidc_issuer, oidc_subject) VALUES ('https://idp.example', $1) RETURNING id",
        )
        .bind(org.to_string())
        .fetch_one(&mut *tx)
        .await
        .unwrap();
        sqlx::query("INSERT INTO memberships (org_id, user_id, role) VALUES ($1, $2, 'owner')")
            .bind(org.as_uuid())
            .bind(user)
            .execute(&mut *tx)
            .await
            .unwrap();
        sqlx::query(
            "INSERT INTO invites (org_id, email, role, token_sha256, created_by, expires_at) \
             VALUES ($1, 'x@example.com', 'viewer', sha256($2::bytea), 'seed', now() + interval '1 hour')",
        )
        .bind(org.as_uuid())
        .bind(org.as_uuid().as_bytes().to_vec())
        .execute(&mut *tx)
        .await
        .unwrap();
        // What a traffic scan writes (normally through `Store::scan_traffic_events`).
        for insert in [
            "INSERT INTO traffic_events (org_id, mesh_id, kind, minute, source, destination, event_key, evidence) \
             SELECT $1, id, 'new-caller', now(), 'web', 'db', 'seed', '{}' FROM meshes",
            "INSERT INTO traffic_edges_seen (org_id, mesh_id, source, destination, first_seen, last_seen) \
             SELECT $1, id, 'web', 'db', now(), now() FROM meshes",
            // What the telemetry writer counts as dropped (normally `TenantTx::record_drops`).
            "INSERT INTO telemetry_drops (org_id, mesh_id, minute, reason, items) \
             SELECT $1, id, date_trunc('minute', now()), 'series_budget', 3 FROM meshes",
            // A proxy's view of an upstream's endpoints (normally `TenantTx::record_endpoint_health`).
            "INSERT INTO endpoint_health (org_id, mesh_id, node_id, source_service, destination_service, \
                 destination_port, destination_subset, total, healthy, degraded, ejected, reported_at) \
             SELECT $1, id, 'web-1', 'web', 'db', 5432, '', 2, 1, 0, 1, now() FROM meshes",
        ] {
            sqlx::query(insert).bind(org.as_uuid()).execute(&mut *tx).await.unwrap();
        }
        tx.commit().await.unwrap();
    }
    Seeded { a: ids[0], b: ids[1] }
}

#[tokio::test]
async fn without_a_tenant_every_tenant_table_is_empty() {
    let db = TestDb::create().await;
    let store = db.store().await;
    seed(&db, &store).await;

    let mut admin = db.admin_conn().await;
    let tables = org_tables(&mut admin).await;
    assert_eq!(
        tables,
        [
            "access_log",
            "api_tokens",
            "audit_events",
            "dataplane_counts",
            "dataplane_service_counts",
            "dataplanes",
            "endpoint_health",
            "idempotency_keys",
            "invites",
            "issued_svids",
            "join_tokens",
            "memberships",
            "mesh_cas",
            "meshes",
            "resources",
            "telemetry_drops",
            "telemetry_edges",
            "traffic_edges_seen",
            "traffic_events",
            "trust_domain_directory",
            "xds_configs",
            "xds_ledger"
        ]
    );

    let mut app = db.app_conn().await;
    for t in &tables {
        let as_admin: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {t}")))
            .fetch_one(&mut admin)
            .await
            .unwrap();
        assert_eq!(as_admin, 2, "the seed wrote one {t} row per organization");
        let as_app: Result<i64, _> =
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {t}")))
                .fetch_one(&mut app)
                .await;
        // A directory cannot be read at all; everything else reads as empty.
        if DIRECTORIES.contains(&t.as_str()) {
            let err = as_app.expect_err("the server role reads a directory");
            assert!(err.to_string().contains("permission denied"), "{t}: {err}");
        } else {
            assert_eq!(as_app.unwrap(), 0, "{t} shows rows to the server role with no tenant set");
        }
    }
    // A tenant set in one transaction does not outlive it.
    let mut tx = app.begin().await.unwrap();
    sqlx::query("SELECT set_config('app.org_id', (SELECT id::text FROM organizations LIMIT 1), true)")
        .execute(&mut *tx)
        .await
        .unwrap();
    let inside: i64 = sqlx::query_scalar("SELECT count(*) FROM meshes").fetch_one(&mut *tx).await.unwrap();
    assert_eq!(inside, 1);
    tx.commit().await.unwrap();
    let after: i64 = sqlx::query_scalar("SELECT count(*) FROM meshes").fetch_one(&mut app).await.unwrap();
    assert_eq!(after, 0, "the tenant leaked past its transaction");
}

#[tokio::test]
async fn a_tenant_can_neither_see_nor_write_another_tenants_rows() {
    let db = TestDb::create().await;
    let store = db.store().await;
    let Seeded { a, b } = seed(&db, &store).await;
    let mut admin = db.admin_conn().await;
    let tables = tenant_tables(&mut admin).await;

    let mut app = db.app_conn().await;
    let mut tx = app.begin().await.unwrap();
    sqlx::query("SELECT set_config('app.org_id', $1, true)")
        .bind(a.to_string())
        .execute(&mut *tx)
        .await
        .unwrap();
    for t in &tables {
        let mine: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {t}")))
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        assert_eq!(mine, 1, "org A sees exactly its own {t} row");
        let theirs: i64 =
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {t} WHERE org_id = $1")))
                .bind(b.as_uuid())
                .fetch_one(&mut *tx)
                .await
                .unwrap();
        assert_eq!(theirs, 0, "org A sees org B's {t} rows");
        // Where the server role may update or delete at all, B's rows stay out of reach.
        let may = |privilege: &'static str| {
            sqlx::query_scalar::<_, bool>("SELECT has_table_privilege($1, $2)")
                .bind(t.clone())
                .bind(privilege)
        };
        if may("UPDATE").fetch_one(&mut *tx).await.unwrap() {
            let updated =
                sqlx::query(sqlx::AssertSqlSafe(format!("UPDATE {t} SET org_id = org_id WHERE org_id = $1")))
                    .bind(b.as_uuid())
                    .execute(&mut *tx)
                    .await
                    .unwrap();
            assert_eq!(updated.rows_affected(), 0, "org A updated org B's {t} rows");
        }
        if may("DELETE").fetch_one(&mut *tx).await.unwrap() {
            let deleted = sqlx::query(sqlx::AssertSqlSafe(format!("DELETE FROM {t} WHERE org_id = $1")))
                .bind(b.as_uuid())
                .execute(&mut *tx)
                .await
                .unwrap();
            assert_eq!(deleted.rows_affected(), 0, "org A deleted org B's {t} rows");
        }
    }
    // Writing a row into B while A is the tenant is refused by the policy itself.
    let mut sp = tx.begin().await.unwrap();
    let err = sqlx::query("INSERT INTO meshes (org_id, name) VALUES ($1, 'stolen')")
        .bind(b.as_uuid())
        .execute(&mut *sp)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("row-level security"), "{err}");
    sp.rollback().await.unwrap();
    // Moving one of A's rows into B is refused too.
    let mut sp = tx.begin().await.unwrap();
    let err =
        sqlx::query("UPDATE meshes SET org_id = $1").bind(b.as_uuid()).execute(&mut *sp).await.unwrap_err();
    assert!(err.to_string().contains("row-level security"), "{err}");
    sp.rollback().await.unwrap();
    // Renaming B's organization is out of reach; reading the directory is not.
    let renamed = sqlx::query("UPDATE organizations SET name = 'pwned' WHERE id = $1")
        .bind(b.as_uuid())
        .execute(&mut *tx)
        .await
        .unwrap();
    assert_eq!(renamed.rows_affected(), 0);
    tx.rollback().await.unwrap();

    // Through the store's own API the same holds: B's mesh is not found from A.
    let mut ta = store.tenant(a).await.unwrap();
    let meshes = ta.list_meshes().await.unwrap();
    assert_eq!(meshes.len(), 1);
    let mut tb = store.tenant(b).await.unwrap();
    let b_mesh = tb.list_meshes().await.unwrap().remove(0);
    assert!(matches!(ta.delete_mesh(b_mesh.id).await, Err(trellis_store::StoreError::NotFound(_))));
    drop(ta);
    assert_eq!(tb.list_meshes().await.unwrap().len(), 1, "B's mesh survived A's delete");
}

#[tokio::test]
async fn every_tenant_table_has_forced_rls_and_the_server_role_is_unprivileged() {
    let db = TestDb::create().await;
    let mut admin = db.admin_conn().await;
    assert_eq!(tables_missing_rls(&mut admin).await, Vec::<String>::new());

    let role = sqlx::query(
        "SELECT rolsuper, rolbypassrls, rolcreaterole, rolcreatedb FROM pg_roles WHERE rolname = $1",
    )
    .bind(APP_ROLE)
    .fetch_one(&mut admin)
    .await
    .unwrap();
    assert!(!role.get::<bool, _>("rolsuper"), "server role is superuser");
    assert!(!role.get::<bool, _>("rolbypassrls"), "server role has BYPASSRLS");
    assert!(!role.get::<bool, _>("rolcreaterole"));
    assert!(!role.get::<bool, _>("rolcreatedb"));
    let owned: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = 'public' AND pg_get_userbyid(c.relowner) = $1",
    )
    .bind(APP_ROLE)
    .fetch_all(&mut admin)
    .await
    .unwrap();
    assert!(owned.is_empty(), "server role owns {owned:?}");
    let member_of_owner: bool = sqlx::query_scalar("SELECT pg_has_role($1, 'trellis_owner', 'MEMBER')")
        .bind(APP_ROLE)
        .fetch_one(&mut admin)
        .await
        .unwrap();
    assert!(!member_of_owner, "server role can act as the owner");

    // The check above is not vacuous: a tenant table that forgets RLS is caught.
    let mut owner = PgConnection::connect_with(&db.roles.owner).await.unwrap();
    sqlx::query("CREATE TABLE forgot_rls (org_id uuid NOT NULL, id uuid NOT NULL, PRIMARY KEY (org_id, id))")
        .execute(&mut owner)
        .await
        .unwrap();
    sqlx::query("CREATE TABLE forgot_force (org_id uuid NOT NULL)").execute(&mut owner).await.unwrap();
    sqlx::query("ALTER TABLE forgot_force ENABLE ROW LEVEL SECURITY").execute(&mut owner).await.unwrap();
    assert_eq!(tables_missing_rls(&mut admin).await, ["forgot_force", "forgot_rls"]);
}

#[tokio::test]
async fn slugs_resolve_through_the_directory_and_are_unique() {
    let db = TestDb::create().await;
    let store = db.store().await;
    let slug = OrgSlug::parse("acme").unwrap();
    let org = store.create_org(&slug, "Acme").await.unwrap();
    assert_eq!(store.org_by_slug(&slug).await.unwrap().unwrap().id, org.id);
    assert!(store.org_by_slug(&OrgSlug::parse("nobody").unwrap()).await.unwrap().is_none());
    match store.create_org(&slug, "Acme again").await {
        Err(trellis_store::StoreError::Conflict { constraint }) => {
            assert_eq!(constraint, "organizations_slug_key")
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
}

/// "Which organizations am I in?" crosses tenants: with `app.user_id` set (a `UserTx`), a
/// user sees their own membership rows in every organization — and nothing else: no other
/// user's memberships, no other tenant table, and no write.
#[tokio::test]
async fn a_user_sees_only_their_own_memberships_across_tenants() {
    let db = TestDb::create().await;
    let store = db.store().await;
    let Seeded { a, b } = seed(&db, &store).await;
    let mut admin = db.admin_conn().await;
    let user_a: uuid::Uuid = sqlx::query_scalar("SELECT user_id FROM memberships WHERE org_id = $1")
        .bind(a.as_uuid())
        .fetch_one(&mut admin)
        .await
        .unwrap();
    // Make user A a viewer of B too.
    sqlx::query("INSERT INTO memberships (org_id, user_id, role) VALUES ($1, $2, 'viewer')")
        .bind(b.as_uuid())
        .bind(user_a)
        .execute(&mut admin)
        .await
        .unwrap();

    let mut utx = store.user_tx(user_a).await.unwrap();
    let mine: Vec<(String, Role)> =
        utx.memberships().await.unwrap().into_iter().map(|m| (m.org.slug.to_string(), m.role)).collect();
    assert_eq!(mine, [("org-a".to_owned(), Role::Owner), ("org-b".to_owned(), Role::Viewer)]);
    utx.commit().await.unwrap();

    let mut app = db.app_conn().await;
    let mut tx = app.begin().await.unwrap();
    sqlx::query("SELECT set_config('app.user_id', $1, true)")
        .bind(user_a.to_string())
        .execute(&mut *tx)
        .await
        .unwrap();
    let visible: i64 =
        sqlx::query_scalar("SELECT count(*) FROM memberships").fetch_one(&mut *tx).await.unwrap();
    assert_eq!(visible, 2, "exactly user A's own memberships");
    let tables = tenant_tables(&mut admin).await;
    for t in tables.iter().filter(|t| *t != "memberships") {
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {t}")))
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        assert_eq!(n, 0, "a user context shows {t} rows");
    }
    let changed = sqlx::query("UPDATE memberships SET role = 'owner' WHERE user_id = $1")
        .bind(user_a)
        .execute(&mut *tx)
        .await
        .unwrap();
    assert_eq!(changed.rows_affected(), 0, "a user context cannot change its own memberships");
    let mut sp = tx.begin().await.unwrap();
    let err = sqlx::query("INSERT INTO memberships (org_id, user_id, role) VALUES ($1, $2, 'owner')")
        .bind(OrgId::new().as_uuid())
        .bind(user_a)
        .execute(&mut *sp)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("row-level security"), "{err}");
    sp.rollback().await.unwrap();
    tx.rollback().await.unwrap();
}

/// Issue #10, item 8: a trust domain resolves to its mesh only when named exactly, through
/// `trellis_mesh_of_trust_domain` (SECURITY DEFINER, owned by the owner role, fixed
/// search_path); the server role can neither list the directory nor write another tenant's
/// entry, and a tenant's own entries come and go with its meshes.
#[tokio::test]
async fn the_trust_domain_directory_answers_one_exact_name_and_lists_nothing() {
    let db = TestDb::create().await;
    let store = db.store().await;
    let Seeded { a, b } = seed(&db, &store).await;
    // Without a tenant: one exact trust domain resolves to its mesh (what a TLS client proves).
    let (org, _) = store.mesh_of_trust_domain("prod.org-a.test").await.unwrap().expect("listed");
    assert_eq!(org, a);
    let mut app = db.app_conn().await;
    let lookup = "SELECT org_id FROM trellis_mesh_of_trust_domain($1)";
    let found: Vec<uuid::Uuid> =
        sqlx::query_scalar(lookup).bind("prod.org-a.test").fetch_all(&mut app).await.unwrap();
    assert_eq!(found, [a.as_uuid()], "exactly one row for the exact name");
    for near in
        ["nope.test", "prod.org-a", "prod.org-a.%", "%", "_rod.org-a.test", "PROD.ORG-A.TEST", "", ".*"]
    {
        let rows: Vec<uuid::Uuid> = sqlx::query_scalar(lookup).bind(near).fetch_all(&mut app).await.unwrap();
        assert!(rows.is_empty(), "{near:?} resolved to {rows:?}");
        assert!(store.mesh_of_trust_domain(near).await.unwrap().is_none(), "{near:?}");
    }
    // The table itself is out of the server role's reach, with or without a tenant.
    let mut admin = db.admin_conn().await;
    let readable: bool =
        sqlx::query_scalar("SELECT has_table_privilege($1, 'trust_domain_directory', 'SELECT')")
            .bind(APP_ROLE)
            .fetch_one(&mut admin)
            .await
            .unwrap();
    assert!(!readable, "the server role may SELECT the directory");
    let (definer, config, owner): (bool, Vec<String>, String) = sqlx::query_as(
        "SELECT prosecdef, coalesce(proconfig, '{}'), pg_get_userbyid(proowner)::text FROM pg_proc \
         WHERE proname = 'trellis_mesh_of_trust_domain'",
    )
    .fetch_one(&mut admin)
    .await
    .unwrap();
    assert!(definer, "the lookup runs as its owner");
    assert!(config.iter().any(|c| c.starts_with("search_path=")), "no fixed search_path: {config:?}");
    let owner_role: String = sqlx::query_scalar("SELECT current_user::text")
        .fetch_one(&mut PgConnection::connect_with(&db.roles.owner).await.unwrap())
        .await
        .unwrap();
    assert_eq!(owner, owner_role, "owned by the role that owns the schema");

    let mut tx = app.begin().await.unwrap();
    sqlx::query("SELECT set_config('app.org_id', $1, true)")
        .bind(a.to_string())
        .execute(&mut *tx)
        .await
        .unwrap();
    let mut sp = tx.begin().await.unwrap();
    let err = sqlx::query("SELECT count(*) FROM trust_domain_directory").execute(&mut *sp).await.unwrap_err();
    assert!(err.to_string().contains("permission denied"), "{err}");
    sp.rollback().await.unwrap();
    // Org A cannot list a trust domain under B.
    let b_mesh: uuid::Uuid = sqlx::query_scalar("SELECT id FROM meshes WHERE org_id = $1")
        .bind(b.as_uuid())
        .fetch_one(&mut admin)
        .await
        .unwrap();
    let mut sp = tx.begin().await.unwrap();
    let err = sqlx::query(
        "INSERT INTO trust_domain_directory (trust_domain, org_id, mesh_id) VALUES ('stolen.test', $1, $2)",
    )
    .bind(b.as_uuid())
    .bind(b_mesh)
    .execute(&mut *sp)
    .await
    .unwrap_err();
    assert!(err.to_string().contains("row-level security"), "{err}");
    sp.rollback().await.unwrap();
    // A delete reaches A's own entry only, and no UPDATE is allowed at all.
    let gone = sqlx::query("DELETE FROM trust_domain_directory").execute(&mut *tx).await.unwrap();
    assert_eq!(gone.rows_affected(), 1, "A's own entry");
    let mut sp = tx.begin().await.unwrap();
    let updated = sqlx::query("UPDATE trust_domain_directory SET org_id = $1")
        .bind(a.as_uuid())
        .execute(&mut *sp)
        .await;
    assert!(updated.is_err(), "no UPDATE privilege on the directory");
    sp.rollback().await.unwrap();
    tx.rollback().await.unwrap();
    assert!(store.mesh_of_trust_domain("prod.org-b.test").await.unwrap().is_some(), "B's entry survived");

    // A mesh brings its entry and takes it away, in the tenant's own transaction.
    let mut ta = store.tenant(a).await.unwrap();
    let made = ta
        .put_mesh(
            &MeshName::parse("staging").unwrap(),
            "staging.org-a.test",
            &json!({}),
            &json!({}),
            Precondition::Unconditional,
        )
        .await
        .unwrap()
        .value;
    ta.commit().await.unwrap();
    assert_eq!(store.mesh_of_trust_domain("staging.org-a.test").await.unwrap(), Some((a, made.id)));
    let mut ta = store.tenant(a).await.unwrap();
    ta.delete_mesh(made.id).await.unwrap();
    ta.commit().await.unwrap();
    assert!(store.mesh_of_trust_domain("staging.org-a.test").await.unwrap().is_none());
}
