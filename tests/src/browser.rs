//! A real headless Chromium driven through chromedriver (WebDriver), for the console tests.

use std::process::Stdio;
use std::time::Duration;

use fantoccini::{Client, ClientBuilder};
use tokio::process::{Child, Command};

/// A chromedriver process and one browser session of it, with a fresh profile.
pub struct Chromium {
    pub client: Client,
    _driver: Child,
    _profile: tempfile::TempDir,
}

/// Where Debian's packages put them (`apt install chromium chromium-driver`).
fn find(candidates: &[&str], what: &str) -> String {
    candidates.iter().find(|c| std::path::Path::new(c).is_file()).map(|c| (*c).to_owned()).unwrap_or_else(
        || panic!("{what} is missing: install it (Debian/Ubuntu: apt install chromium chromium-driver)"),
    )
}

impl Chromium {
    pub async fn start() -> Chromium {
        let driver_bin = find(&["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"], "chromedriver");
        let chromium = find(&["/usr/bin/chromium", "/usr/lib/chromium/chromium"], "chromium");
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let driver = Command::new(driver_bin)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("starting chromedriver");
        let profile = tempfile::tempdir().unwrap();
        let capabilities = serde_json::json!({
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--disable-component-update", "--no-first-run", "--disable-default-apps",
                    "--disable-sync", "--metrics-recording-only", "--window-size=1280,900",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            },
            // Every request the page makes, to check that the console asks no other host.
            "goog:loggingPrefs": { "performance": "ALL" },
        });
        let capabilities = match capabilities {
            serde_json::Value::Object(map) => map,
            _ => unreachable!(),
        };
        let url = format!("http://127.0.0.1:{port}");
        let mut last = None;
        for _ in 0..100 {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector).capabilities(capabilities.clone()).connect(&url).await {
                Ok(client) => return Chromium { client, _driver: driver, _profile: profile },
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("chromedriver at {url} gave no session: {last:?}");
    }

    /// Closes the session (and so the browser).
    pub async fn close(self) {
        let _ = self.client.close().await;
    }
}
