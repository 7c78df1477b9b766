//! Schemathesis, a property-based API tester nobody here wrote, run over the served OpenAPI
//! document with a valid token: no server errors, no response that breaks the schema.

use std::path::PathBuf;
use std::time::Duration;

use trellis_model::Role;
use trellis_store::testing::TestDb;
use trellis_tests::{Api, Trellis, document_path, example_documents, token, trellis};

/// `st` from the virtual environment that scripts/test creates.
fn schemathesis() -> PathBuf {
    let st = std::env::var_os("TRELLIS_SCHEMATHESIS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/st"));
    assert!(
        st.is_file(),
        "schemathesis is missing at {}: run scripts/test, which installs it into .venv \
         (or `python3 -m venv .venv && .venv/bin/pip install schemathesis==4.32.5`)",
        st.display()
    );
    st
}

#[tokio::test]
async fn schemathesis_finds_no_server_errors_and_no_schema_violations() {
    let st = schemathesis();
    let db = TestDb::create().await;
    let mut cmd = trellis();
    cmd.env("TRELLIS_DATABASE_URL", db.owner_url()).args(["--http-addr", "127.0.0.1:0"]);
    let t = Trellis::start(cmd).await;
    let secret = token(&db, "acme", Role::Owner).await;
    let api = Api::new(&t, "acme", &secret);
    for doc in example_documents() {
        assert!(matches!(api.put(&document_path(&doc), &doc).await.0, 200 | 201));
    }

    let dir = std::env::temp_dir().join(format!("trellis-st-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    // Real organization and mesh names, so that requests reach the handlers, not only 404s.
    std::fs::write(
        dir.join("schemathesis.toml"),
        "[parameters]\n\"path.org\" = \"acme\"\n\"path.mesh\" = \"shop\"\n",
    )
    .unwrap();
    let out = tokio::time::timeout(
        Duration::from_secs(900),
        tokio::process::Command::new(&st)
            .current_dir(&dir)
            .arg("--config-file")
            .arg(dir.join("schemathesis.toml"))
            .arg("run")
            .arg(format!("{}/api/v1/openapi.json", t.base))
            .args(["-H", &format!("Authorization: Bearer {secret}")])
            // Every check but "schema-valid data must be accepted": the API refuses some
            // schema-valid documents on purpose (a route to a service that does not exist, a
            // token that expired before it was made) with 422 and the field path.
            .args(["--checks", "all", "--exclude-checks", "positive_data_acceptance"])
            // Revoking tokens would revoke the one the run authenticates with; a new slug
            // would move the organization away from the path the run uses; accepting an
            // invitation is for a logged-in user, never a token (tests/tests/accounts_*.rs);
            // deleting the organization would end the run (tests/tests/xds_protocol.rs).
            .args(["--exclude-operation-id", "revokeToken", "--exclude-operation-id", "updateOrg"])
            .args(["--exclude-operation-id", "deleteOrg"])
            .args(["--exclude-operation-id", "acceptInvite"])
            .args(["--phases", "examples,coverage,fuzzing", "--max-examples", "40", "--seed", "20261125"])
            .args(["--request-timeout", "10", "--no-color"])
            .env("SCHEMATHESIS_TELEMETRY", "false")
            .output(),
    )
    .await
    .expect("schemathesis finished within 15 minutes")
    .expect("run schemathesis");
    let _ = std::fs::remove_dir_all(&dir);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found problems:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("44 selected") || stdout.contains("Operations:"), "{stdout}");
    assert!(!stdout.contains("Authentication failed"), "the run lost its credentials:\n{stdout}");
}
