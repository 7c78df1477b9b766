//! The command-line client of the REST API: `apply -f`, `get`, `delete`, kubectl style.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};
use clap::{Args, ValueEnum};
use serde::Deserialize;
use serde_json::{Value, json};
use trellis_model::PropagationWait;
use trellis_model::config::Kind;

/// How long a request may take, beyond a write's `?wait=`.
const CLIENT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Where the API is and who calls it: flags, then `TRELLIS_*` variables, then the config file.
#[derive(Debug, Args, Clone)]
pub struct ClientArgs {
    /// Base URL of the Trellis API [default: http://127.0.0.1:8080].
    #[arg(long, env = "TRELLIS_SERVER")]
    pub server: Option<String>,
    /// API token (`trls_pat_…`).
    #[arg(long, env = "TRELLIS_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Organization slug [default: the token's organization].
    #[arg(long, env = "TRELLIS_ORG")]
    pub org: Option<String>,
    /// Client config file (YAML with `server`, `token`, `org`, `mesh`)
    /// [default: $XDG_CONFIG_HOME/trellis/config.yaml or ~/.config/trellis/config.yaml].
    #[arg(long, env = "TRELLIS_CONFIG")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct Apply {
    /// Files of YAML or JSON documents (`-` for stdin); several documents per file.
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<PathBuf>,
    /// Mesh for documents whose metadata names none.
    #[arg(long)]
    pub mesh: Option<String>,
    #[command(flatten)]
    pub wait: WaitArgs,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `--wait [--timeout]`: a write returns once the proxies have it.
#[derive(Debug, Args, Clone, Copy)]
pub struct WaitArgs {
    /// Wait until every proxy a resource configures has applied it; fail naming the proxy
    /// and its reason when one rejects it, or naming the ones that have not applied it when
    /// the timeout passes. Meshes themselves are not waited on.
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits in all (at most 5m).
    #[arg(long, default_value = "60s", value_parser = parse_wait, requires = "wait")]
    pub timeout: PropagationWait,
}

impl WaitArgs {
    /// When the wait is over, if there is one.
    fn deadline(self) -> Option<Deadline> {
        self.wait.then(|| Deadline(tokio::time::Instant::now() + self.timeout.get()))
    }
}

fn parse_wait(s: &str) -> Result<PropagationWait, String> {
    PropagationWait::parse(s).map_err(|e| format!("{s:?}: {e}"))
}

/// The end of a `--wait`: what is left of it goes with each write as `?wait=`.
#[derive(Debug, Clone, Copy)]
pub struct Deadline(tokio::time::Instant);

impl Deadline {
    /// What is left, as a write's `wait` (at least 1 ms: a last look at where it stands).
    fn left(self) -> PropagationWait {
        let left = self.0.saturating_duration_since(tokio::time::Instant::now());
        let left = left.max(std::time::Duration::from_millis(1));
        PropagationWait::new(left.min(PropagationWait::MAX)).expect("between 1 ms and the maximum")
    }
}

#[derive(Debug, Args)]
pub struct Get {
    /// Kind: mesh, service, httproute, tcproute, accesspolicy, circuitbreaker, healthcheck, ratelimit
    /// (singular, plural or URL spelling).
    pub kind: String,
    /// One resource; all when omitted.
    pub name: Option<String>,
    /// Mesh of the resources.
    #[arg(long)]
    pub mesh: Option<String>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// Label selector, e.g. `app=web,tier!=db`.
    #[arg(short = 'l', long)]
    pub selector: Option<String>,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct Delete {
    /// Kind, as for `get`.
    pub kind: String,
    /// Name of the resource.
    pub name: String,
    /// Mesh of the resource.
    #[arg(long)]
    pub mesh: Option<String>,
    #[command(flatten)]
    pub wait: WaitArgs,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
    Yaml,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    server: Option<String>,
    token: Option<String>,
    org: Option<String>,
    mesh: Option<String>,
}

/// A connected client: base URL, token, organization and default mesh.
pub struct Client {
    http: reqwest::Client,
    server: String,
    token: String,
    org: String,
    mesh: Option<String>,
}

/// The kind named on the command line: a mesh, or a mesh-scoped kind.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Target {
    Mesh,
    Scoped(Kind),
}

fn target(s: &str) -> anyhow::Result<Target> {
    if matches!(s.to_ascii_lowercase().as_str(), "mesh" | "meshes") {
        return Ok(Target::Mesh);
    }
    Kind::lookup(s).map(Target::Scoped).ok_or_else(|| {
        anyhow!(
            "unknown kind {s:?}; kinds are mesh, {}",
            Kind::ALL.map(|k| k.name().to_lowercase()).join(", ")
        )
    })
}

impl Client {
    pub(crate) async fn connect(
        args: &ClientArgs,
        xdg_config: Option<PathBuf>,
        home: Option<PathBuf>,
    ) -> anyhow::Result<Client> {
        let path = args.config.clone().or_else(|| {
            xdg_config.or_else(|| home.map(|h| h.join(".config"))).map(|d| d.join("trellis/config.yaml"))
        });
        let file: ConfigFile = match &path {
            Some(p) if p.exists() => serde_yaml::from_str(
                &std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
            )
            .with_context(|| format!("{} is not a valid client config", p.display()))?,
            Some(p) if args.config.is_some() => bail!("config file {} does not exist", p.display()),
            _ => ConfigFile::default(),
        };
        let server = args
            .server
            .clone()
            .or(file.server)
            .unwrap_or_else(|| "http://127.0.0.1:8080".into())
            .trim_end_matches('/')
            .to_owned();
        let token = args.token.clone().or(file.token).ok_or_else(|| {
            anyhow!("no API token: pass --token, set TRELLIS_TOKEN, or put `token:` in the config file")
        })?;
        let mut client = Client::new(server, token, String::new())?;
        client.mesh = file.mesh;
        client.org = match args.org.clone().or(file.org) {
            Some(o) => o,
            None => {
                let me = client.call(reqwest::Method::GET, "/api/v1/me", None).await?.1;
                me["org"]["slug"]
                    .as_str()
                    .ok_or_else(|| anyhow!("/api/v1/me did not name an organization"))?
                    .to_owned()
            }
        };
        Ok(client)
    }

    /// A client of the API at `server` (no trailing `/`) for organization `org`.
    pub fn new(server: String, token: String, org: String) -> anyhow::Result<Client> {
        let http = reqwest::Client::builder()
            .timeout(CLIENT_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Client { http, server, token, org, mesh: None })
    }

    /// Sends a JSON body (none when `Null`) and returns the JSON answer.
    pub async fn call_json(
        &self,
        method: reqwest::Method,
        path: &str,
        body: &Value,
    ) -> anyhow::Result<Value> {
        Ok(self.call(method, path, (!body.is_null()).then_some(body)).await?.1)
    }

    /// GETs a document that is not JSON (a PEM file, say).
    pub async fn get_text(&self, path: &str) -> anyhow::Result<String> {
        match self.call(reqwest::Method::GET, path, None).await?.1 {
            Value::String(text) => Ok(text),
            other => bail!("{path} answered JSON where text was expected: {other}"),
        }
    }

    /// Sends a request; a problem response becomes an error that prints like the server said it.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<(u16, Value)> {
        self.call_full(method, path, body).await.map(|(s, v, _)| (s, v))
    }

    /// Like `call`, and whether the server reported the write as a no-op.
    async fn call_full(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<(u16, Value, bool)> {
        self.write(method, path, body, None).await
    }

    /// A write, with `?wait=` when there is a deadline (the answer may then take that long
    /// beyond the usual time).
    async fn write(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        deadline: Option<Deadline>,
    ) -> anyhow::Result<(u16, Value, bool)> {
        let wait = deadline.map(Deadline::left);
        let url = match wait {
            Some(w) => format!("{}{path}?wait={w}", self.server),
            None => format!("{}{path}", self.server),
        };
        let mut req = self.http.request(method.clone(), &url).bearer_auth(&self.token);
        if let Some(w) = wait {
            req = req.timeout(CLIENT_TIMEOUT + w.get());
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let res =
            req.send().await.with_context(|| format!("cannot reach the Trellis API at {}", self.server))?;
        let status = res.status().as_u16();
        let unchanged = res.headers().contains_key("trellis-unchanged");
        let text = res.text().await?;
        let value: Value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        if status >= 400 {
            bail!("{}", describe_problem(status, &value));
        }
        Ok((status, value, unchanged))
    }

    pub fn org_path(&self, rest: &str) -> String {
        format!("/api/v1/orgs/{}{rest}", self.org)
    }

    fn mesh_of<'a>(&'a self, given: Option<&'a str>) -> anyhow::Result<&'a str> {
        given
            .or(self.mesh.as_deref())
            .ok_or_else(|| anyhow!("which mesh? pass --mesh or set `mesh:` in the config file"))
    }
}

/// The server's problem document, as a person reads it.
fn describe_problem(status: u16, v: &Value) -> String {
    let mut s = format!(
        "{} ({status}): {}",
        v["title"].as_str().unwrap_or("error"),
        v["detail"].as_str().map(str::to_owned).unwrap_or_else(|| v.to_string())
    );
    for e in v["errors"].as_array().into_iter().flatten() {
        s.push_str(&format!(
            "\n  {}: {}",
            e["field"].as_str().unwrap_or("?"),
            e["message"].as_str().unwrap_or("?")
        ));
    }
    s
}

fn read_documents(files: &[PathBuf]) -> anyhow::Result<Vec<(String, Value)>> {
    let mut docs = Vec::new();
    for f in files {
        let (label, text) = if f == Path::new("-") {
            let mut s = String::new();
            std::io::stdin().read_to_string(&mut s)?;
            ("stdin".to_owned(), s)
        } else {
            (
                f.display().to_string(),
                std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?,
            )
        };
        docs.extend(parse_documents(&label, &text)?);
    }
    Ok(docs)
}

/// The documents of one file, each labelled `<label>#<n>`.
pub fn parse_documents(label: &str, text: &str) -> anyhow::Result<Vec<(String, Value)>> {
    let mut docs = Vec::new();
    // YAML is a superset of JSON: one parser reads both, document by document.
    for (i, d) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let v = Value::deserialize(d)
            .with_context(|| format!("{label}: document {} is not valid YAML or JSON", i + 1))?;
        if v.is_null() {
            continue;
        }
        docs.push((format!("{label}#{}", i + 1), v));
    }
    Ok(docs)
}

pub async fn apply(args: Apply, xdg: Option<PathBuf>, home: Option<PathBuf>) -> anyhow::Result<()> {
    let docs = read_documents(&args.files)?;
    let client = Client::connect(&args.client, xdg, home).await?;
    let deadline = args.wait.deadline();
    apply_documents(&client, &docs, args.mesh.as_deref(), deadline, |line| println!("{line}")).await
}

/// Creates or updates every document, reporting one line per document; an error names the
/// documents that failed (the others are applied all the same). With a deadline, each write
/// waits for the proxies it configures, and one that a proxy rejected, or that some had not
/// applied by the deadline, fails too.
pub async fn apply_documents(
    client: &Client,
    docs: &[(String, Value)],
    default_mesh: Option<&str>,
    deadline: Option<Deadline>,
    report: impl Fn(&str),
) -> anyhow::Result<()> {
    // Meshes first, then services (which routes and policies reference), then the rest.
    let rank = |v: &Value| match v["kind"].as_str() {
        Some("Mesh") => 0,
        Some(k) if Kind::lookup(k) == Some(Kind::Service) => 1,
        _ => 2,
    };
    let mut ordered: Vec<&(String, Value)> = docs.iter().collect();
    ordered.sort_by_key(|(_, v)| rank(v));
    let (mut failed, mut unapplied) = (0, 0);
    for (label, doc) in ordered {
        match apply_one(client, doc, default_mesh, deadline).await {
            Ok((line, None)) => report(&line),
            Ok((line, Some(not_applied))) => {
                unapplied += 1;
                report(&line);
                eprintln!("{not_applied}");
            }
            Err(e) => {
                failed += 1;
                eprintln!("{label}: {e:#}");
            }
        }
    }
    match (failed, unapplied) {
        (0, 0) => Ok(()),
        (0, n) => bail!("{n} of {} documents were not applied by every proxy", docs.len()),
        (n, 0) => bail!("{n} of {} documents failed", docs.len()),
        (n, m) => bail!("{n} of {} documents failed, and {m} were not applied by every proxy", docs.len()),
    }
}

/// After a write that waited: a line for its propagation, and, when a proxy rejected it or
/// some had not applied it in time, what to say about that (naming them and why).
fn waited(label: &str, body: &Value) -> (String, Option<String>) {
    let wait = &body["status"]["propagation"]["wait"];
    let summary = wait["summary"].as_str().unwrap_or("no propagation status").to_owned();
    match wait["outcome"].as_str() {
        Some("applied") => (summary, None),
        Some("rejected") => ("rejected by a proxy".to_owned(), Some(format!("{label}: {summary}"))),
        Some("timedOut") => ("not applied in time".to_owned(), Some(format!("{label}: {summary}"))),
        // A write that made no mesh revision has no status to wait on.
        _ => (summary, None),
    }
}

/// Applies one document: the line to print, and, after a wait, why it is not applied
/// everywhere.
async fn apply_one(
    client: &Client,
    doc: &Value,
    default_mesh: Option<&str>,
    deadline: Option<Deadline>,
) -> anyhow::Result<(String, Option<String>)> {
    let kind = doc["kind"].as_str().ok_or_else(|| anyhow!("the document has no `kind`"))?;
    let name =
        doc["metadata"]["name"].as_str().ok_or_else(|| anyhow!("the document has no `metadata.name`"))?;
    let (path, label) = match target(kind)? {
        Target::Mesh => (client.org_path(&format!("/meshes/{name}")), format!("mesh/{name}")),
        Target::Scoped(k) => {
            let mesh = client.mesh_of(doc["metadata"]["mesh"].as_str().or(default_mesh))?;
            let mut doc = doc.clone();
            doc["metadata"]["mesh"] = json!(mesh);
            let path = client.org_path(&format!("/meshes/{mesh}/{}/{name}", k.plural()));
            let (status, body, unchanged) =
                client.write(reqwest::Method::PUT, &path, Some(&doc), deadline).await?;
            let label = format!("{}/{name}", k.name().to_lowercase());
            let line = outcome(&label, status, &body, unchanged);
            if deadline.is_none() {
                return Ok((line, None));
            }
            let (note, failure) = waited(&label, &body);
            return Ok((format!("{line}; {note}"), failure));
        }
    };
    let (status, body, unchanged) = client.call_full(reqwest::Method::PUT, &path, Some(doc)).await?;
    Ok((outcome(&label, status, &body, unchanged), None))
}

fn outcome(label: &str, status: u16, body: &Value, unchanged: bool) -> String {
    match status {
        201 => format!("{label} created"),
        _ if unchanged => format!("{label} unchanged"),
        _ => format!("{label} configured (generation {})", body["metadata"]["generation"]),
    }
}

pub async fn get(args: Get, xdg: Option<PathBuf>, home: Option<PathBuf>) -> anyhow::Result<()> {
    let t = target(&args.kind)?;
    let client = Client::connect(&args.client, xdg, home).await?;
    let base = match t {
        Target::Mesh => client.org_path("/meshes"),
        Target::Scoped(k) => {
            client.org_path(&format!("/meshes/{}/{}", client.mesh_of(args.mesh.as_deref())?, k.plural()))
        }
    };
    let items: Vec<Value> = match &args.name {
        Some(n) => vec![client.call(reqwest::Method::GET, &format!("{base}/{n}"), None).await?.1],
        None => {
            let mut items = Vec::new();
            let mut cursor: Option<String> = None;
            loop {
                let mut q = vec![("limit", "500".to_owned())];
                if let Some(c) = &cursor {
                    q.push(("cursor", c.clone()));
                }
                if let Some(s) = &args.selector {
                    q.push(("labelSelector", s.clone()));
                }
                let query: Vec<String> = q.iter().map(|(k, v)| format!("{k}={}", urlencode(v))).collect();
                let page =
                    client.call(reqwest::Method::GET, &format!("{base}?{}", query.join("&")), None).await?.1;
                items.extend(page["items"].as_array().cloned().unwrap_or_default());
                match page["nextCursor"].as_str() {
                    Some(c) => cursor = Some(c.to_owned()),
                    None => break,
                }
            }
            items
        }
    };
    let single = args.name.is_some();
    match args.output {
        Output::Json => {
            let v = if single { items[0].clone() } else { json!({ "items": items }) };
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        Output::Yaml => {
            let docs: Vec<String> = items.iter().map(serde_yaml::to_string).collect::<Result<_, _>>()?;
            print!("{}", docs.join("---\n"));
        }
        Output::Table => print!("{}", table(&items)),
    }
    Ok(())
}

pub(crate) fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn table(items: &[Value]) -> String {
    let rows: Vec<[String; 5]> = items
        .iter()
        .map(|i| {
            let m = &i["metadata"];
            let labels: BTreeMap<String, String> =
                serde_json::from_value(m["labels"].clone()).unwrap_or_default();
            [
                m["name"].as_str().unwrap_or("").to_owned(),
                i["kind"].as_str().unwrap_or("").to_owned(),
                m["mesh"].as_str().unwrap_or("-").to_owned(),
                m["generation"].to_string(),
                if labels.is_empty() {
                    "<none>".into()
                } else {
                    labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
                },
            ]
        })
        .collect();
    let header = ["NAME", "KIND", "MESH", "GENERATION", "LABELS"].map(str::to_owned);
    let widths: Vec<usize> =
        (0..5).map(|c| rows.iter().chain([&header]).map(|r| r[c].len()).max().unwrap_or(0)).collect();
    let fmt = |r: &[String; 5]| {
        let cells: Vec<String> = r.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        format!("{}\n", cells.join("   ").trim_end())
    };
    std::iter::once(fmt(&header)).chain(rows.iter().map(fmt)).collect()
}

pub async fn delete(args: Delete, xdg: Option<PathBuf>, home: Option<PathBuf>) -> anyhow::Result<()> {
    let t = target(&args.kind)?;
    let client = Client::connect(&args.client, xdg, home).await?;
    let (path, label) = match t {
        Target::Mesh => (client.org_path(&format!("/meshes/{}", args.name)), format!("mesh/{}", args.name)),
        Target::Scoped(k) => (
            client.org_path(&format!(
                "/meshes/{}/{}/{}",
                client.mesh_of(args.mesh.as_deref())?,
                k.plural(),
                args.name
            )),
            format!("{}/{}", k.name().to_lowercase(), args.name),
        ),
    };
    let deadline = args.wait.deadline().filter(|_| t != Target::Mesh);
    let (_, body, _) = client.write(reqwest::Method::DELETE, &path, None, deadline).await?;
    if deadline.is_none() {
        println!("{label} deleted");
        return Ok(());
    }
    let (note, failure) = waited(&label, &body);
    println!("{label} deleted; {note}");
    match failure {
        None => Ok(()),
        Some(why) => bail!("{why}"),
    }
}
