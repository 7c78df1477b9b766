//! A real headless Chromium driven through chromedriver (WebDriver), for the console tests.

use std::process::Stdio;
use std::time::Duration;

use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder};
use reqwest::{Method, Url};
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
                Ok(client) => {
                    // The browser's own start page is not the console's: a blank page
                    // replaces it, and the log forgets it.
                    client.goto("about:blank").await.unwrap();
                    requests_sent(&client).await;
                    return Chromium { client, _driver: driver, _profile: profile };
                }
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

type ParseError = <Url as std::str::FromStr>::Err;

/// chromedriver's (non-standard) command that hands over the performance log's entries
/// since the last time it was read.
#[derive(Debug)]
struct ReadPerformanceLog;

impl WebDriverCompatibleCommand for ReadPerformanceLog {
    fn endpoint(&self, base: &Url, session: Option<&str>) -> Result<Url, ParseError> {
        base.join(&format!("session/{}/se/log", session.unwrap_or_default()))
    }

    fn method_and_body(&self, _: &Url) -> (Method, Option<String>) {
        (Method::POST, Some(r#"{"type":"performance"}"#.to_owned()))
    }
}

/// The URL of every request the browser's pages sent since the last call, navigations
/// included, in order (from Chromium's performance log).
pub async fn requests_sent(b: &Client) -> Vec<String> {
    let entries = b.issue_cmd(ReadPerformanceLog).await.expect("chromedriver's performance log");
    let mut urls = Vec::new();
    for entry in entries.as_array().expect("the log is a list") {
        let message = entry["message"].as_str().unwrap_or_default();
        let event: serde_json::Value = serde_json::from_str(message).unwrap_or_default();
        if event["message"]["method"] == "Network.requestWillBeSent" {
            let url = &event["message"]["params"]["request"]["url"];
            urls.push(url.as_str().unwrap_or_default().to_owned());
        }
    }
    urls
}

/// Asserts that every request since the last check went to `origin` (Trellis itself):
/// called after each page load, it names the page that reached elsewhere. A load sends at
/// least its document, so an empty log means the log is not read, and fails too.
pub async fn assert_only_to(b: &Client, origin: &str) {
    let page = b.current_url().await.map(|u| u.to_string()).unwrap_or_default();
    let sent = requests_sent(b).await;
    assert!(!sent.is_empty(), "{page}: the performance log shows no request since the last check");
    let origin = origin.trim_end_matches('/');
    for url in &sent {
        let ours = url.strip_prefix(origin).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'));
        assert!(ours, "{page} sent a request to {url}, not to Trellis ({origin}); all it sent: {sent:?}");
    }
}
