//! Benchmark: the agent's data path on loopback, in the shape of ztunnel's and linkerd2-proxy's
//! benchmarks. An upstream nginx serves 1 KiB (HTTP/1.1, and a gRPC-framed 1 KiB reply with
//! `grpc-status` trailers over h2c); `h2load` sends a fixed 1,000 requests/s to it
//!
//! - directly (the baseline),
//! - through nginx as a plain reverse proxy (pooled upstream connections): one plain hop,
//! - through one agent: its inbound listener taking plaintext (the mesh in PERMISSIVE mode)
//!   and forwarding to the application, the same one plain hop nginx makes,
//! - through two agents with mTLS: the caller's outbound listener → the callee's inbound
//!   listener → nginx (a caller always speaks mTLS to a mesh endpoint; PERMISSIVE only lets
//!   the callee also take plaintext on a connection whose first byte is not TLS's; HTTP/1.1
//!   goes over HTTP/2 between the agents, as they agree in the handshake),
//!
//! in `ROUNDS` interleaved rounds (direct, nginx, one agent, two agents, again), so that the
//! paths compared are measured in the same minutes of a machine whose speed drifts, and
//! reports p50/p99/p99.9 and the latency each adds over direct, the CPU of each proxy (from
//! the scheduler's accounting in /proc: vCPU per 1,000 requests/s, CPU, waiting for a core,
//! wake-ups and preemptions per request) and its RSS at idle and under load, and after each
//! table the two latency goals with the interval chance gives them (`against_goals`); then
//! TCP throughput with `iperf3`, direct and through two agents.
//!
//! Run: `cargo build --release --bin trellis && cargo build --profile agent -p trellis-agent &&
//! flock /tmp/trellis-fixed-ports.lock cargo bench -p trellis-tests --bench agent_proxy` (needs
//! PostgreSQL like the tests, and nginx, h2load and iperf3; the agents bind 127.0.0.40 and
//! 127.0.0.41). The agent is built alone and in its own profile, as the README builds it.
//! `BENCH_SECS` sets the seconds per row (default 10); `BENCH_TABLES` picks tables
//! (`http1-bursts,tcp`, say).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use tokio::process::Command;
use trellis_model::Role;
use trellis_store::testing::TestDb;
use trellis_tests::grpc::platform_root;
use trellis_tests::{Api, Process, Trellis, agent_command, token, trellis};

const RATE: u32 = 1_000;
const BODY: usize = 1024;
const CALLER: &str = "127.0.0.40";
const CALLEE: &str = "127.0.0.41";
const HTTP_PORT: u16 = 8080;
const GRPC_PORT: u16 = 9090;
const TCP_PORT: u16 = 5201;
/// Each path's `BENCH_SECS` are measured in this many turns, the paths taken in turn.
const ROUNDS: u64 = 5;
/// The paths measured, as the tables name them.
const DIRECT: &str = "direct";
const NGINX_HOP: &str = "nginx, one plain hop";
const ONE_AGENT_HOP: &str = "one agent, plain hop";
const TWO_AGENTS: &str = "two agents, mTLS";
/// The first second of each row's run: not timed, as connections are opened and caches warm.
const WARM_UP: Duration = Duration::from_secs(1);

/// The path of `tool`, or a panic that names it and its Debian package.
fn need(tool: &str, package: &str) -> PathBuf {
    let path = std::env::var("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("agent_proxy bench: `{tool}` is required (Debian/Ubuntu: apt install {package})")
        })
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn secs() -> u64 {
    std::env::var("BENCH_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(10)
}

/// Whether the table `name` (`http1-bursts`, `http1-spaced`, `grpc-bursts`, `grpc-spaced`,
/// `tcp`) is measured: all unless `BENCH_TABLES` lists some, comma-separated (to compare two
/// builds on one table in less time).
fn measures(name: &str) -> bool {
    std::env::var("BENCH_TABLES").map_or(true, |list| list.split(',').any(|t| t.trim() == name))
}

/// One nginx process (no master, no workers: its pid's CPU is all of it) with its own
/// configuration and temporary files in a directory of its own; killed when dropped.
struct Nginx {
    _dir: tempfile::TempDir,
    process: Process,
}

impl Nginx {
    fn start(nginx: &Path, servers: &str) -> Nginx {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        // Readable by nginx whichever user it runs as.
        std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let payload = vec![b'x'; BODY - 5];
        let mut reply = vec![0u8];
        reply.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        reply.extend_from_slice(&payload);
        std::fs::write(dir.path().join("reply.grpc"), reply).unwrap();
        // keepalive_requests: by default nginx closes a connection after 1,000 requests, and
        // h2load does not open another, which cut the rows through nginx short of the others.
        let conf = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n  access_log off;\n  keepalive_requests 1000000;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  \
             fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  root {d};\n{servers}}}\n"
        );
        let path = dir.path().join("nginx.conf");
        std::fs::write(&path, conf).unwrap();
        let mut cmd = Command::new(nginx);
        cmd.arg("-p").arg(dir.path()).arg("-c").arg(&path);
        Nginx { process: Process::start(cmd), _dir: dir }
    }

    /// The application: 1 KiB over HTTP/1.1 on `http`, a 1 KiB gRPC reply (status in
    /// trailers, as a gRPC server sends it) over h2c on `grpc`, to any method.
    fn upstream(nginx: &Path, http: u16, grpc: u16) -> Nginx {
        let body = "a".repeat(BODY);
        Self::start(
            nginx,
            &format!(
                "  server {{ listen 127.0.0.1:{http}; location / {{ default_type text/plain; return 200 \"{body}\"; }} }}\n\
                 server {{ listen 127.0.0.1:{grpc} http2; location / {{ default_type application/grpc; \
                 error_page 405 =200 /reply.grpc; try_files /reply.grpc =404; add_trailer grpc-status 0 always; }} }}\n"
            ),
        )
    }

    /// nginx as a plain reverse proxy to the upstream, keeping upstream connections open.
    fn reverse_proxy(nginx: &Path, http: u16, grpc: u16, up_http: u16, up_grpc: u16) -> Nginx {
        Self::start(
            nginx,
            &format!(
                "  upstream app {{ server 127.0.0.1:{up_http}; keepalive 32; keepalive_requests 1000000; }}\n  \
                 upstream rpc {{ server 127.0.0.1:{up_grpc}; keepalive 32; keepalive_requests 1000000; }}\n  \
                 server {{ listen 127.0.0.1:{http}; location / {{ proxy_pass http://app; proxy_http_version 1.1; \
                 proxy_set_header Connection \"\"; }} }}\n  \
                 server {{ listen 127.0.0.1:{grpc} http2; location / {{ grpc_pass grpc://rpc; }} }}\n"
            ),
        )
    }
}

/// What a process has used so far: from the scheduler's own accounting
/// (`/proc/<pid>/task/*/schedstat`, nanoseconds, not the 10 ms ticks of `stat`, and the
/// context switches of `status`), summed over its threads, and its resident memory.
#[derive(Clone, Copy, Default)]
struct Usage {
    /// Time on a CPU.
    cpu_ns: u64,
    /// Time ready to run but waiting for a CPU.
    waiting_ns: u64,
    /// Times it gave up its CPU to wait for something (each is a sleep, and a wake-up later).
    waits: u64,
    /// Times the scheduler took its CPU away while it could have run on.
    preempted: u64,
    /// Of the time on a CPU, clock ticks in user space and in the kernel (`stat`: coarse,
    /// but only their ratio is shown).
    user_ticks: u64,
    kernel_ticks: u64,
    rss_kib: u64,
}

fn usage(pid: u32) -> Usage {
    let mut u = Usage::default();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("schedstat")) else { continue };
        let v: Vec<u64> = stat.split_whitespace().filter_map(|n| n.parse().ok()).collect();
        if let [cpu, waiting, _] = v[..] {
            u.cpu_ns += cpu;
            u.waiting_ns += waiting;
        }
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else { continue };
        let count = |key: &str| -> u64 {
            status.lines().find_map(|l| l.strip_prefix(key)).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
        };
        u.waits += count("voluntary_ctxt_switches:");
        u.preempted += count("nonvoluntary_ctxt_switches:");
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else { continue };
        // After the command's closing parenthesis: state is field 3, utime 14, stime 15.
        let fields: Vec<&str> =
            stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace().collect();
        let tick = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        u.user_ticks += tick(11);
        u.kernel_ticks += tick(12);
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    u.rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    u
}

/// What a watched process used over a run.
struct Used {
    /// The run's seconds.
    wall: f64,
    /// Of `Usage`, the difference over the run.
    delta: Usage,
    peak_rss_mib: f64,
}

impl Used {
    /// CPUs used on average.
    fn vcpu(&self) -> f64 {
        self.delta.cpu_ns as f64 / 1e9 / self.wall
    }

    /// Both runs as one.
    fn add(&mut self, other: Used) {
        let (a, b) = (&mut self.delta, other.delta);
        a.cpu_ns += b.cpu_ns;
        a.waiting_ns += b.waiting_ns;
        a.waits += b.waits;
        a.preempted += b.preempted;
        a.user_ticks += b.user_ticks;
        a.kernel_ticks += b.kernel_ticks;
        a.rss_kib = b.rss_kib;
        self.wall += other.wall;
        self.peak_rss_mib = self.peak_rss_mib.max(other.peak_rss_mib);
    }
}

/// CPU and peak RSS of the watched processes over a run.
struct Watch {
    pids: Vec<u32>,
    before: Vec<Usage>,
    peak: Arc<Vec<AtomicU64>>,
    started: Instant,
    sampler: tokio::task::JoinHandle<()>,
}

impl Watch {
    fn start(pids: &[u32]) -> Watch {
        let before: Vec<Usage> = pids.iter().map(|p| usage(*p)).collect();
        let peak: Arc<Vec<AtomicU64>> = Arc::new(before.iter().map(|u| AtomicU64::new(u.rss_kib)).collect());
        let sampler = tokio::spawn({
            let (pids, peak) = (pids.to_vec(), peak.clone());
            async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    for (i, p) in pids.iter().enumerate() {
                        peak[i].fetch_max(usage(*p).rss_kib, Ordering::Relaxed);
                    }
                }
            }
        });
        Watch { pids: pids.to_vec(), before, peak, started: Instant::now(), sampler }
    }

    /// Per process: what it used over the run.
    fn stop(self) -> Vec<Used> {
        self.sampler.abort();
        let wall = self.started.elapsed().as_secs_f64();
        self.pids
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let (before, after) = (self.before[i], usage(*p));
                let peak = self.peak[i].load(Ordering::Relaxed).max(after.rss_kib);
                // A thread that ended during the run takes its counts with it: never below zero.
                let delta = Usage {
                    cpu_ns: after.cpu_ns.saturating_sub(before.cpu_ns),
                    waiting_ns: after.waiting_ns.saturating_sub(before.waiting_ns),
                    waits: after.waits.saturating_sub(before.waits),
                    preempted: after.preempted.saturating_sub(before.preempted),
                    user_ticks: after.user_ticks.saturating_sub(before.user_ticks),
                    kernel_ticks: after.kernel_ticks.saturating_sub(before.kernel_ticks),
                    rss_kib: after.rss_kib,
                };
                Used { wall, delta, peak_rss_mib: peak as f64 / 1024.0 }
            })
            .collect()
    }
}

/// Latencies of one run at the fixed rate, in microseconds, by round (each resampled on its
/// own), and the failures.
struct Run {
    rounds: Vec<Vec<u64>>,
    failed: u64,
    /// Requests sent, the warm-up's included.
    sent_in_all: u64,
}

impl Run {
    /// Both runs as one.
    fn add(&mut self, other: Run) {
        self.rounds.extend(other.rounds);
        self.failed += other.failed;
        self.sent_in_all += other.sent_in_all;
    }

    /// Requests answered (the warm-up's left out).
    fn answered(&self) -> usize {
        self.rounds.iter().map(Vec::len).sum()
    }

    fn pct(&self, p: f64) -> f64 {
        pct_ms(&mut self.rounds.concat(), p)
    }

    /// The `p` percentile of one resample: each round's requests drawn with replacement, as
    /// many as it had, so that a round's share (and the machine's state in its seconds) stays.
    fn resampled_pct(&self, p: f64, rng: &mut impl Rng, scratch: &mut Vec<u64>) -> f64 {
        scratch.clear();
        for round in self.rounds.iter().filter(|r| !r.is_empty()) {
            scratch.extend((0..round.len()).map(|_| round[rng.random_range(0..round.len())]));
        }
        pct_ms(scratch, p)
    }
}

/// The `p` percentile of `micros` (reordered), in milliseconds.
fn pct_ms(micros: &mut [u64], p: f64) -> f64 {
    if micros.is_empty() {
        return f64::NAN;
    }
    let rank = ((micros.len() as f64) * p).ceil() as usize;
    let (_, at, _) = micros.select_nth_unstable(rank.clamp(1, micros.len()) - 1);
    *at as f64 / 1000.0
}

/// Resamples for [`interval`].
const RESAMPLES: usize = 1000;

/// How far `a`'s p99 minus `b`'s could be from what one run measured, by chance of which
/// requests fell in the tail: the middle 95 % of that difference over `RESAMPLES` resamples of
/// both runs. (What a run measures besides, a machine busier in some seconds than in others, is
/// what the interleaved rounds spread over the paths.)
fn interval(a: &Run, b: &Run) -> (f64, f64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(99);
    let mut scratch = Vec::new();
    let mut diffs: Vec<f64> = (0..RESAMPLES)
        .map(|_| {
            a.resampled_pct(0.99, &mut rng, &mut scratch) - b.resampled_pct(0.99, &mut rng, &mut scratch)
        })
        .collect();
    diffs.sort_unstable_by(f64::total_cmp);
    (diffs[RESAMPLES * 25 / 1000], diffs[RESAMPLES * 975 / 1000 - 1])
}

#[derive(Clone, Copy, PartialEq)]
enum Proto {
    Http1,
    Grpc,
}

/// How the fixed rate's requests arrive.
#[derive(Clone, Copy)]
enum Arrivals {
    /// Ten connections at 100 requests/s each. h2load starts their timers together, so the
    /// ten requests of each 10 ms arrive at once: the proxy's p99 is the time it takes to
    /// work through a burst of ten.
    Bursts,
    /// One connection at 1,000 requests/s: a request every millisecond, each on its own, so
    /// the added latency is one request's way through the hop.
    Spaced,
}

impl Arrivals {
    fn connections(self) -> u32 {
        match self {
            Arrivals::Bursts => 10,
            Arrivals::Spaced => 1,
        }
    }

    fn key(self) -> &'static str {
        match self {
            Arrivals::Bursts => "bursts",
            Arrivals::Spaced => "spaced",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Arrivals::Bursts => "in bursts of ten (10 connections × 100/s)",
            Arrivals::Spaced => "evenly spaced (1 connection × 1,000/s)",
        }
    }
}

/// `h2load` at `RATE` requests/s as `arrivals` says (one request in flight per connection)
/// for a second of warm-up and then `secs`; latency from its per-request log, but for the
/// warm-up's requests. They are counted for the CPU per request all the same: the proxies'
/// CPU is measured over the whole of h2load's run (h2load's own `--warm-up-time` leaves them
/// out of its log, which made every per-request figure 1 + 1/`secs` times too large).
async fn h2load(h2load: &Path, proto: Proto, arrivals: Arrivals, url: &str, secs: u64) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("requests.tsv");
    let mut cmd = Command::new(h2load);
    let connections = arrivals.connections();
    cmd.args(["-c", &connections.to_string(), "-m", "1", "--rps", &(RATE / connections).to_string()])
        .args(["-D", &(secs + WARM_UP.as_secs()).to_string()])
        .arg(format!("--log-file={}", log.display()));
    match proto {
        Proto::Http1 => {
            cmd.arg("--h1");
        }
        Proto::Grpc => {
            // An empty message: 5 bytes of gRPC framing.
            let request = dir.path().join("request.grpc");
            std::fs::write(&request, [0u8; 5]).unwrap();
            cmd.arg("-d").arg(&request).args(["-H", "content-type: application/grpc", "-H", "te: trailers"]);
        }
    }
    let out = cmd.arg(url).output().await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "h2load {url}: {stdout}{}", String::from_utf8_lossy(&out.stderr));
    let counts = stdout.lines().find(|l| l.starts_with("requests:")).unwrap_or_default();
    let count = |what: &str| -> u64 {
        counts
            .split(',')
            .find(|c| c.trim_end().ends_with(what))
            .and_then(|c| c.split_whitespace().rev().nth(1)?.parse().ok())
            .unwrap_or(0)
    };
    // Each line: the request's start (µs since the epoch), its status, its latency (µs).
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let lines: Vec<Vec<&str>> = text.lines().map(|l| l.split('\t').collect()).collect();
    let start = |cols: &[&str]| cols.first().and_then(|c| c.parse::<u128>().ok()).unwrap_or(0);
    let measured_from = lines.iter().map(|c| start(c)).min().unwrap_or(0) + WARM_UP.as_micros();
    let mut micros = Vec::new();
    let mut not_ok = 0;
    for cols in lines.iter().filter(|c| start(c) >= measured_from) {
        if cols.len() == 3 && cols[1] == "200" {
            micros.push(cols[2].parse().unwrap());
        } else {
            not_ok += 1;
        }
    }
    let failed = count("failed") + count("errored") + count("timeout") + not_ok;
    Run { rounds: vec![micros], failed, sent_in_all: lines.len() as u64 }
}

struct Row {
    label: &'static str,
    run: Run,
    proxies: Vec<(&'static str, Used)>,
}

impl Row {
    /// Both rounds as one.
    fn add(&mut self, other: Row) {
        self.run.add(other.run);
        for ((_, used), (_, more)) in self.proxies.iter_mut().zip(other.proxies) {
            used.add(more);
        }
    }
}

/// `rows` measured for `secs` each, the first of them direct.
fn table(title: &str, rows: &[Row], secs: u64) {
    let direct = &rows[0].run;
    println!("\n{title}, {secs} s in {ROUNDS} rounds:\n");
    // h2load keeps one request in flight per connection: a path slower than the rate allows
    // sends fewer requests, which the achieved rate shows.
    println!("| path | achieved | p50 | p99 | p99.9 | added p50 | added p99 | added p99.9 | failed |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        let ms = |v: f64| format!("{v:.3} ms");
        let added = |p: f64| format!("{:+.3} ms", r.run.pct(p) - direct.pct(p));
        let sent = r.run.answered() as u64 + r.run.failed;
        println!(
            "| {} | {:.0}/s | {} | {} | {} | {} | {} | {} | {} of {sent} |",
            r.label,
            sent as f64 / secs as f64,
            ms(r.run.pct(0.50)),
            ms(r.run.pct(0.99)),
            ms(r.run.pct(0.999)),
            added(0.50),
            added(0.99),
            added(0.999),
            r.run.failed,
        );
    }
    // Per request, from the scheduler's accounting: CPU time, time spent ready but waiting
    // for one of the cores (what a busy machine adds to every hop), wake-ups, and the times a
    // process was taken off its core for another; and how much of its CPU time was the
    // kernel's (system calls, the network stack), as against its own code.
    println!(
        "\n| proxy (row) | vCPU | vCPU per 1,000 requests/s | CPU per request | of it in the kernel | waiting for a core per request | wake-ups per request | preempted per request | peak RSS |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        let requests = r.run.sent_in_all.max(1) as f64;
        for (who, used) in &r.proxies {
            let per_k = used.vcpu() / (f64::from(RATE) / 1000.0);
            let ticks = (used.delta.user_ticks + used.delta.kernel_ticks).max(1) as f64;
            println!(
                "| {who} ({}) | {:.3} | {per_k:.3} | {:.1} µs | {:.0} % | {:.1} µs | {:.2} | {:.2} | {:.1} MiB |",
                r.label,
                used.vcpu(),
                used.delta.cpu_ns as f64 / 1e3 / requests,
                100.0 * used.delta.kernel_ticks as f64 / ticks,
                used.delta.waiting_ns as f64 / 1e3 / requests,
                used.delta.waits as f64 / requests,
                used.delta.preempted as f64 / requests,
                used.peak_rss_mib,
            );
        }
    }
}

/// The two latency goals with how far chance could move each: one agent's p99 against
/// nginx's (their added p99s differ by as much, the direct path's p99 being common to both),
/// and what two agents add at p99.
fn against_goals(rows: &[Row]) {
    let run = |label: &str| &rows.iter().find(|r| r.label == label).expect("a row of every path").run;
    let (direct, nginx, one, two) = (run(DIRECT), run(NGINX_HOP), run(ONE_AGENT_HOP), run(TWO_AGENTS));
    let (low, high) = interval(one, nginx);
    println!(
        "\none agent's p99 − nginx's: {:+.3} ms (95 % of resamples {low:+.3} … {high:+.3} ms; goal ≤ 0)",
        one.pct(0.99) - nginx.pct(0.99)
    );
    let (low, high) = interval(two, direct);
    println!(
        "two agents' added p99: {:+.3} ms (95 % of resamples {low:+.3} … {high:+.3} ms; goal ≤ 1 ms)",
        two.pct(0.99) - direct.pct(0.99)
    );
}

/// Measures `url` at the fixed rate for `secs` while watching `proxies` (name, pid).
async fn row(
    tool: &Path,
    label: &'static str,
    (proto, arrivals): (Proto, Arrivals),
    url: &str,
    proxies: &[(&'static str, u32)],
    secs: u64,
) -> Row {
    let pids: Vec<u32> = proxies.iter().map(|(_, p)| *p).collect();
    let watch = Watch::start(&pids);
    let run = h2load(tool, proto, arrivals, url, secs).await;
    let used = watch.stop();
    let proxies = proxies.iter().zip(used).map(|((n, _), used)| (*n, used)).collect();
    Row { label, run, proxies }
}

/// One `iperf3` TCP stream direct to `direct_port` and through two agents (`through`), with
/// the CPU of the two `agents` (caller, callee).
async fn tcp_throughput(iperf3: &Path, direct_port: u16, through: &str, agents: [u32; 2]) {
    let direct = iperf(iperf3, "127.0.0.1", direct_port).await;
    let watch = Watch::start(&agents);
    let (host, port) = through.rsplit_once(':').unwrap();
    let via_agents = iperf(iperf3, host, port.parse().unwrap()).await;
    let used = watch.stop();
    println!("\nTCP throughput (iperf3, one stream, {} s):\n", secs());
    println!("| path | throughput | ratio | caller agent vCPU | callee agent vCPU |");
    println!("|---|---|---|---|---|");
    println!("| direct | {:.2} Gbit/s | 1.00× | | |", direct / 1e9);
    println!(
        "| two agents, mTLS | {:.2} Gbit/s | {:.2}× | {:.2} | {:.2} |",
        via_agents / 1e9,
        via_agents / direct,
        used[0].vcpu(),
        used[1].vcpu()
    );
}

/// `iperf3` for `BENCH_SECS` to `host:port`: bits/s received.
async fn iperf(tool: &Path, host: &str, port: u16) -> f64 {
    let out = Command::new(tool)
        .args(["-c", host, "-p", &port.to_string(), "-t", &secs().to_string(), "-J"])
        .output()
        .await
        .unwrap();
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("iperf3: {}", String::from_utf8_lossy(&out.stderr)));
    report["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or_else(|| panic!("iperf3 to {host}:{port}: {report}"))
}

async fn put(api: &Api, path: &str, doc: Value) {
    let (status, body) = api.put(path, &doc).await;
    assert!(status == 200 || status == 201, "PUT {path}: {body}");
}

fn mesh(mode: &str) -> Value {
    json!({"spec": {"mtls": {"mode": mode}, "defaultAccess": "allow"}})
}

/// An agent of `service` on `address`.
fn agent(
    server: &str,
    ca: &Path,
    dir: &Path,
    token: &str,
    service: &str,
    address: &str,
    extra: &[&str],
) -> Process {
    let mut cmd = agent_command(server, ca, dir, token, "bench", service, address);
    // No sampled access log, as nginx's `access_log off`: with the default 1 %, the control
    // plane and PostgreSQL ingesting it took the bench's two cores only in the agents' rows.
    cmd.args(["--access-log-sample", "0"]).args(extra);
    Process::start(cmd)
}

async fn outbound_addr(p: &mut Process, listener: &str) -> String {
    let needle = format!("listening {listener} on ");
    let line = p.wait_for_line(&needle, Duration::from_secs(30)).await;
    line.split(&needle).nth(1).unwrap().split_whitespace().next().unwrap().to_owned()
}

/// Waits until `url` answers 200 (the configuration has reached the agents).
async fn until_served(url: &str) {
    let client = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(2)).build().unwrap();
    for _ in 0..300 {
        if client.get(url).send().await.is_ok_and(|r| r.status() == 200) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{url} was never served");
}

/// Waits until something accepts connections on 127.0.0.1:`port`.
async fn listening(port: u16) {
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("nothing listens on 127.0.0.1:{port}");
}

fn rss_mib(pid: u32) -> f64 {
    usage(pid).rss_kib as f64 / 1024.0
}

#[tokio::main]
async fn main() {
    let nginx = need("nginx", "nginx");
    let h2 = need("h2load", "nghttp2-client");
    let iperf3 = need("iperf3", "iperf3");
    let (up_http, up_grpc, px_http, px_grpc, up_tcp) =
        (free_port(), free_port(), free_port(), free_port(), free_port());
    let upstream = Nginx::upstream(&nginx, up_http, up_grpc);
    let proxy = Nginx::reverse_proxy(&nginx, px_http, px_grpc, up_http, up_grpc);
    let iperf_server = Process::start({
        let mut c = Command::new(&iperf3);
        c.args(["-s", "-B", "127.0.0.1", "-p", &up_tcp.to_string()]);
        c
    });
    listening(up_tcp).await;
    listening(up_http).await;
    listening(px_http).await;

    let db = TestDb::create().await;
    let mut cmd = trellis();
    cmd.env("TRELLIS_DATABASE_URL", db.owner_url()).args(["--http-addr", "127.0.0.1:0"]);
    let t = Trellis::start(cmd).await;
    let api = Api::new(&t, "acme", &token(&db, "acme", Role::Admin).await);
    // The callee's inbound listener also takes plaintext: the one-agent hop.
    put(&api, "/meshes/bench", mesh("PERMISSIVE")).await;
    let ports = json!([
        {"name": "http", "port": HTTP_PORT, "protocol": "http"},
        {"name": "grpc", "port": GRPC_PORT, "protocol": "grpc"},
        {"name": "tcp", "port": TCP_PORT, "protocol": "tcp"},
    ]);
    put(&api, "/meshes/bench/services/app", json!({"spec": {"ports": ports}})).await;
    put(
        &api,
        "/meshes/bench/services/client",
        json!({"spec": {"ports": [{"port": 9000, "protocol": "http"}]}}),
    )
    .await;
    let store = db.store().await;
    let tmp = tempfile::tempdir().unwrap();
    let ca = tmp.path().join("platform-ca.pem");
    std::fs::write(&ca, platform_root(&store).await).unwrap();
    store.close().await;
    let join = |service: &'static str| {
        let api = &api;
        async move {
            let (status, body) = api.post("/meshes/bench/join-tokens", &json!({"service": service})).await;
            assert_eq!(status, 201, "{body}");
            body["token"].as_str().unwrap().to_owned()
        }
    };
    let dir = |name: &str| {
        let d = tmp.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        d
    };
    let app_ports = format!("{HTTP_PORT}={up_http},{GRPC_PORT}={up_grpc},{TCP_PORT}={up_tcp}");
    let ports = format!("{HTTP_PORT},{GRPC_PORT},{TCP_PORT}");
    let mut callee = agent(
        &t.xds,
        &ca,
        &dir("callee"),
        &join("app").await,
        "app",
        CALLEE,
        &["--port", &ports, "--app-port", &app_ports, "--outbound", "none"],
    );
    callee.wait_for_line(&format!("listening inbound:{HTTP_PORT} on "), Duration::from_secs(30)).await;
    let mut caller =
        agent(&t.xds, &ca, &dir("caller"), &join("client").await, "client", CALLER, &["--outbound", "app"]);
    let out_http = outbound_addr(&mut caller, &format!("outbound:app.bench:{HTTP_PORT}")).await;
    let out_grpc = outbound_addr(&mut caller, &format!("outbound:app.bench:{GRPC_PORT}")).await;
    let out_tcp = outbound_addr(&mut caller, &format!("outbound:app.bench:{TCP_PORT}")).await;
    until_served(&format!("http://{out_http}/")).await;
    until_served(&format!("http://{CALLEE}:{HTTP_PORT}/")).await;
    let (caller_pid, callee_pid) = (caller.pid(), callee.pid());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = (rss_mib(caller_pid), rss_mib(callee_pid));

    let uptime = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("agent_proxy: load average at start {}", uptime.trim());
    let round_secs = (secs() / ROUNDS).max(1);
    for (proto, name, key, direct, through_nginx, through_one, through_two, path) in [
        (Proto::Http1, "HTTP/1.1", "http1", up_http, px_http, HTTP_PORT, &out_http, "/"),
        (Proto::Grpc, "gRPC (h2c)", "grpc", up_grpc, px_grpc, GRPC_PORT, &out_grpc, "/bench.Echo/Get"),
    ] {
        let paths = [
            (DIRECT, format!("http://127.0.0.1:{direct}{path}"), Vec::new()),
            (
                NGINX_HOP,
                format!("http://127.0.0.1:{through_nginx}{path}"),
                vec![("nginx", proxy.process.pid())],
            ),
            (
                ONE_AGENT_HOP,
                format!("http://{CALLEE}:{through_one}{path}"),
                vec![("callee agent", callee_pid)],
            ),
            (
                TWO_AGENTS,
                format!("http://{through_two}{path}"),
                vec![("caller agent", caller_pid), ("callee agent", callee_pid)],
            ),
        ];
        for arrivals in [Arrivals::Bursts, Arrivals::Spaced] {
            if !measures(&format!("{key}-{}", arrivals.key())) {
                continue;
            }
            let how = (proto, arrivals);
            let mut rows: Vec<Row> = Vec::new();
            for round in 0..ROUNDS {
                for (i, (label, url, proxies)) in paths.iter().enumerate() {
                    let r = row(&h2, label, how, url, proxies, round_secs).await;
                    match round {
                        0 => rows.push(r),
                        _ => rows[i].add(r),
                    }
                }
            }
            table(&format!("{name}, {RATE} requests/s {}", arrivals.describe()), &rows, round_secs * ROUNDS);
            against_goals(&rows);
        }
    }

    if measures("tcp") {
        tcp_throughput(&iperf3, up_tcp, &out_tcp, [caller_pid, callee_pid]).await;
    }

    tokio::time::sleep(Duration::from_secs(2)).await;
    println!(
        "\nagent RSS: idle before the runs caller {:.1} MiB, callee {:.1} MiB; idle after them caller {:.1} MiB, callee {:.1} MiB",
        idle.0,
        idle.1,
        rss_mib(caller_pid),
        rss_mib(callee_pid)
    );
    let uptime = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("agent_proxy: load average at end {}", uptime.trim());
    drop((caller, callee, upstream, iperf_server));
    t.kill().await;
}
