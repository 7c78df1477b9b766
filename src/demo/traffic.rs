//! The demo's traffic generator: steady calls to `productpage`, and a summary of what the
//! mesh did with them every ten seconds.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;

use super::processes::Processes;

/// One call in ten goes on the beta channel, one in twenty asks for the details no policy allows.
const BETA_EVERY: u64 = 10;
const DENIED_EVERY: u64 = 20;
const REPORT_EVERY: Duration = Duration::from_secs(10);

/// Calls `productpage` at `rate` per second until cancelled (or until a demo process exits).
pub async fn generate(productpage: SocketAddr, rate: u32, procs: &mut Processes) -> anyhow::Result<()> {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?;
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate.max(1));
    let mut report = tokio::time::interval(REPORT_EVERY);
    report.tick().await;
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for n in 0u64.. {
        tokio::select! {
            _ = tick.tick() => {
                let (path, beta) = match n {
                    n if n % DENIED_EVERY == 0 => ("/details", false),
                    n => ("/", n % BETA_EVERY == 0),
                };
                let mut req = http.get(format!("http://{productpage}{path}"));
                if beta {
                    req = req.header("x-beta", "true");
                }
                let outcome = match req.send().await {
                    Ok(res) => classify(path, beta, res.status().as_u16(), res.json().await.unwrap_or(Value::Null)),
                    Err(e) => format!("failed: {e}"),
                };
                *counts.entry(outcome).or_default() += 1;
            }
            _ = report.tick() => {
                procs.check_running()?;
                let line: Vec<String> = counts.iter().map(|(k, v)| format!("{k}: {v}")).collect();
                println!("last {}s: {}", REPORT_EVERY.as_secs(), line.join(", "));
                counts.clear();
            }
        }
    }
    Ok(())
}

/// What one call shows: which reviews version served it, or how it failed.
fn classify(path: &str, beta: bool, status: u16, body: Value) -> String {
    let channel = if beta { "beta" } else { "regular" };
    match (path, status) {
        ("/details", 200) => "details allowed (unexpected)".into(),
        ("/details", _) => "details denied".into(),
        (_, 200) => {
            let reviews = &body["reviews"];
            let version = reviews["version"].as_str().unwrap_or("?");
            match reviews["ratings"]["protocol"].as_str() {
                Some(protocol) => format!("{channel} -> reviews {version} -> ratings ({protocol})"),
                None => format!("{channel} -> reviews {version}"),
            }
        }
        (_, status) => format!("{channel} -> error {status}"),
    }
}
