//! Benchmark: REST reads (`GET` of one HTTP route) of a running `trellis serve`, driven by
//! `wrk`, against `pgbench -S` (one primary-key SELECT per transaction) on the same
//! PostgreSQL with the same number of connections, measured in the same run: the ratio says
//! how much of the database's read capacity a GET turns into answers.
//!
//! Run (release binary beside the bench, so the server is optimized too):
//! `cargo build --release --bin trellis && cargo bench -p trellis-tests --bench rest_reads`
//! (needs PostgreSQL like the tests, `wrk` and `pgbench`: `apt install wrk postgresql-contrib`).
//! `BENCH_SECS` sets the seconds measured per row (default 10).

use std::process::Command;

use trellis_model::Role;
use trellis_store::testing::TestDb;
use trellis_tests::{Api, Trellis, document_path, example_documents, token, trellis};

const CONNECTIONS: [usize; 2] = [1, 32];

fn secs() -> u64 {
    std::env::var("BENCH_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(10)
}

fn need(tool: &str, install: &str) {
    let found = Command::new(tool).arg("--version").output().is_ok();
    assert!(found, "{tool} is required: {install}");
}

/// Runs a command and returns its standard output, failing with its error output.
fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The number after `label` on the line that starts with it (after trimming).
fn figure(text: &str, label: &str) -> f64 {
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with(label))
        .unwrap_or_else(|| panic!("no {label:?} in {text}"));
    let word = line[label.len()..].split_whitespace().next().unwrap();
    let (num, unit) = word.split_at(word.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(word.len()));
    let n: f64 = num.parse().unwrap();
    match unit {
        "us" => n / 1e3,
        "s" => n * 1e3,
        "k" => n * 1e3,
        _ => n, // ms, or a plain count
    }
}

#[tokio::main]
async fn main() {
    need("wrk", "apt install wrk");
    need("pgbench", "apt install postgresql-contrib (or postgresql-client)");
    let dur = secs().to_string();
    let db = TestDb::create().await;
    let mut cmd = trellis();
    cmd.env("TRELLIS_DATABASE_URL", db.owner_url()).env("TRELLIS_LOG", "warn").args([
        "--http-addr",
        "127.0.0.1:0",
        "--db-max-connections",
        "32",
    ]);
    let t = Trellis::start(cmd).await;
    let api = Api::new(&t, "bench", &token(&db, "bench", Role::Viewer).await);
    let editor = Api::new(&t, "bench", &token(&db, "bench", Role::Editor).await);
    for doc in example_documents() {
        let (status, body) = editor.put(&document_path(&doc), &doc).await;
        assert!(status == 200 || status == 201, "{body}");
    }
    let url = api.url("/meshes/shop/http-routes/reviews");
    assert_eq!(api.get("/meshes/shop/http-routes/reviews").await.0, 200);

    // pgbench's own tables, in the same database (scale 1: 100,000 accounts).
    let pg_url = db.owner_url();
    run(Command::new("pgbench").args(["-i", "-q", "-s", "1", &pg_url]));

    println!("| connections | GET /…/http-routes/reviews | p50 | p99 | `pgbench -S` | ratio |");
    println!("|---|---|---|---|---|---|");
    for c in CONNECTIONS {
        let threads = c.min(2).to_string();
        let conns = c.to_string();
        let auth = format!("Authorization: Bearer {}", api.token);
        let out = run(Command::new("wrk").args([
            "-t",
            &threads,
            "-c",
            &conns,
            "-d",
            &format!("{dur}s"),
            "--latency",
            "-H",
            &auth,
            &url,
        ]));
        assert!(!out.contains("Non-2xx"), "GETs failed: {out}");
        let rps = figure(&out, "Requests/sec:");
        let (p50, p99) = (figure(&out, "50%"), figure(&out, "99%"));
        let pg = run(
            Command::new("pgbench").args(["-S", "-n", "-c", &conns, "-j", &threads, "-T", &dur, &pg_url])
        );
        let tps = figure(&pg, "tps =");
        println!("| {c} | {rps:.0}/s | {p50:.2} ms | {p99:.2} ms | {tps:.0}/s | {:.2}× |", rps / tps);
    }
    drop(t);
}
