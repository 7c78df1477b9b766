//! The observe commands, clients of the REST API like `apply`: `logs` (the access log as a
//! table), `why` (what decided one logged call, as a paragraph), `impact` (what saving an
//! AccessPolicy would change among the recorded calls) and `events` (unexpected traffic, and
//! the draft AccessPolicy that settles an event).

use std::path::PathBuf;

use anyhow::{Context, anyhow, bail};
use serde_json::Value;

use crate::cli::{Client, parse_documents, urlencode};
use crate::config::{Events, Impact, Logs, Why};

/// Most entries one page of the access log holds (the API's bound).
const PAGE: u16 = 500;

pub async fn logs(args: Logs, xdg: Option<PathBuf>, home: Option<PathBuf>) -> anyhow::Result<()> {
    let client = Client::connect(&args.client, xdg, home).await?;
    let since = chrono::Utc::now()
        - chrono::TimeDelta::from_std(args.since).map_err(|_| anyhow!("--since is too long"))?;
    let mut query = vec![("since", since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))];
    if let Some(s) = &args.service {
        query.push(("service", s.clone()));
    }
    if args.denied {
        query.push(("denied", "true".into()));
    }
    if let Some(s) = args.status {
        query.push(("status", s.to_string()));
    }
    let mut entries: Vec<Value> = Vec::new();
    let mut cursor: Option<String> = None;
    while entries.len() < usize::from(args.limit) {
        let mut q = query.clone();
        q.push(("limit", (args.limit - entries.len() as u16).min(PAGE).to_string()));
        if let Some(c) = &cursor {
            q.push(("cursor", c.clone()));
        }
        let q: Vec<String> = q.iter().map(|(k, v)| format!("{k}={}", urlencode(v))).collect();
        let path = client.org_path(&format!("/meshes/{}/access-log?{}", args.mesh, q.join("&")));
        let page = client.call_json(reqwest::Method::GET, &path, &Value::Null).await?;
        entries.extend(page["items"].as_array().cloned().unwrap_or_default());
        match page["nextCursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    print!("{}", log_table(&entries));
    Ok(())
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Columns left-aligned to their widest cell, separated by three spaces.
fn table<const N: usize>(header: [&str; N], rows: &[[String; N]]) -> String {
    let header = header.map(str::to_owned);
    let widths: Vec<usize> = (0..N)
        .map(|c| rows.iter().chain([&header]).map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let line = |r: &[String; N]| {
        let cells: Vec<String> = r.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        format!("{}\n", cells.join("   ").trim_end())
    };
    std::iter::once(line(&header)).chain(rows.iter().map(line)).collect()
}

/// The access log, newest first: one row per entry, with the id `trellis why` takes.
fn log_table(entries: &[Value]) -> String {
    let rows: Vec<[String; 8]> = entries
        .iter()
        .map(|e| {
            let time = e["loggedAt"].as_str().unwrap_or("").to_owned();
            let call = match (e["method"].as_str(), e["path"].as_str()) {
                (Some(m), Some(p)) => format!("{m} {p}"),
                _ => e["protocol"].as_str().unwrap_or("").to_uppercase(),
            };
            [
                time.split('.').next().unwrap_or(&time).to_owned(),
                text(&e["outcome"]),
                text(&e["status"]),
                text(&e["source"]["service"]),
                text(&e["destination"]["service"]),
                call,
                text(&e["decision"]["kind"]),
                text(&e["id"]),
            ]
        })
        .collect();
    table(["TIME", "OUTCOME", "STATUS", "SOURCE", "DESTINATION", "CALL", "DECISION", "ID"], &rows)
}

pub async fn why(args: Why, xdg: Option<PathBuf>, home: Option<PathBuf>) -> anyhow::Result<()> {
    let client = Client::connect(&args.client, xdg, home).await?;
    let path = client.org_path(&format!("/meshes/{}/access-log/{}/why", args.mesh, urlencode(&args.entry)));
    let why = client.call_json(reqwest::Method::GET, &path, &Value::Null).await?;
    println!("{}", why_paragraph(&why));
    Ok(())
}

/// What decided a logged call, in one paragraph a person reads.
fn why_paragraph(why: &Value) -> String {
    let e = &why["entry"];
    let call = match (e["method"].as_str(), e["path"].as_str()) {
        (Some(m), Some(p)) => format!("{m} {p}"),
        _ => format!("a {} connection", e["protocol"].as_str().unwrap_or("TCP").to_uppercase()),
    };
    let from = match (e["source"]["service"].as_str(), e["source"]["identity"].as_str()) {
        (Some(s), _) => format!("from {s}"),
        (None, Some(id)) => format!("from {id}"),
        (None, None) => match e["source"]["address"].as_str() {
            Some(a) => format!("from {a}, which presented no mesh identity,"),
            None => "from a caller that presented no mesh identity".to_owned(),
        },
    };
    let to = e["destination"]["service"].as_str().unwrap_or("?");
    let status = e["status"].as_u64().map(|s| format!(", status {s}")).unwrap_or_default();
    let mut out = format!(
        "{call} {from} to {to} at {}{status} (logged by {}'s proxy, {}): {}.",
        e["loggedAt"].as_str().unwrap_or("?"),
        e["reporter"].as_str().unwrap_or("?"),
        e["outcome"].as_str().unwrap_or("?"),
        why["decision"]["summary"].as_str().unwrap_or("no decision recorded"),
    );
    let rule = &why["rule"];
    if rule.is_object() {
        let name = format!("rule {} of AccessPolicy {}", rule["rule"], text(&rule["policy"]));
        let now = if rule["exists"] == false {
            format!(" {name} has been deleted since.")
        } else if rule["ruleNow"].is_null() {
            format!(" AccessPolicy {} no longer has that rule.", text(&rule["policy"]))
        } else {
            let changed =
                if rule["changedSinceEntry"] == true { "changed since; it now reads" } else { "reads" };
            format!(" {name} {changed}: {}.", rule["ruleNow"])
        };
        out.push_str(&now);
    }
    if let Some(rev) = why["meshRevisionAtEntry"].as_i64() {
        out.push_str(&format!(" The mesh was at revision {rev} when the call was recorded."));
    }
    out
}

pub async fn impact(args: Impact, xdg: Option<PathBuf>, home: Option<PathBuf>) -> anyhow::Result<()> {
    let text = if args.file.as_os_str() == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)?;
        s
    } else {
        std::fs::read_to_string(&args.file).with_context(|| format!("reading {}", args.file.display()))?
    };
    let docs = parse_documents(&args.file.display().to_string(), &text)?;
    let [(_, doc)] = docs.as_slice() else {
        bail!(
            "{} must hold exactly one AccessPolicy document (it holds {})",
            args.file.display(),
            docs.len()
        );
    };
    let client = Client::connect(&args.client, xdg, home).await?;
    let mut doc = doc.clone();
    if doc.get("metadata").is_some_and(Value::is_object) {
        doc["metadata"]["mesh"] = Value::String(args.mesh.clone());
    }
    let path =
        client.org_path(&format!("/meshes/{}/impact-preview?window={}", args.mesh, args.window.as_secs()));
    let preview = client.call_json(reqwest::Method::POST, &path, &doc).await?;
    print!("{}", impact_summary(&preview, args.edges));
    Ok(())
}

/// What a policy would change: the totals in a sentence, then the edges, most calls first.
fn impact_summary(p: &Value, shown: usize) -> String {
    let calls = &p["calls"];
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    let mut out = format!(
        "Saving AccessPolicy {} in mesh {} would deny {} calls and newly allow {} of those recorded in the \
         last {} s; {} more depend on the request. {} edges change.\n",
        text(&p["policy"]),
        text(&p["mesh"]),
        n(&calls["newlyDenied"]),
        n(&calls["newlyAllowed"]),
        n(&p["windowSeconds"]),
        n(&calls["dependsOnRequest"]),
        n(&p["edgesChanged"]),
    );
    let edges = p["edges"].as_array().cloned().unwrap_or_default();
    if edges.is_empty() {
        return out;
    }
    let decision = |d: &Value| match d["rule"].as_str() {
        Some(r) => format!("{} ({r})", text(&d["verdict"])),
        None => text(&d["verdict"]),
    };
    let rows: Vec<[String; 5]> = edges
        .iter()
        .take(shown)
        .map(|e| {
            [
                text(&e["source"]),
                text(&e["destination"]),
                text(&e["calls"]),
                decision(&e["before"]),
                decision(&e["after"]),
            ]
        })
        .collect();
    out.push('\n');
    out.push_str(&table(["SOURCE", "DESTINATION", "CALLS", "NOW", "WITH THE POLICY"], &rows));
    if edges.len() > shown {
        out.push_str(&format!("… and {} more edges (--edges to list more)\n", edges.len() - shown));
    }
    out
}

pub async fn events(args: Events, xdg: Option<PathBuf>, home: Option<PathBuf>) -> anyhow::Result<()> {
    let client = Client::connect(&args.client, xdg, home).await?;
    if let Some(id) = &args.draft {
        let path = client.org_path(&format!("/meshes/{}/events/{}/draft-policy", args.mesh, urlencode(id)));
        let draft = client.call_json(reqwest::Method::GET, &path, &Value::Null).await?;
        print!("{}", draft_yaml(&draft)?);
        return Ok(());
    }
    let since = chrono::Utc::now()
        - chrono::TimeDelta::from_std(args.since).map_err(|_| anyhow!("--since is too long"))?;
    let mut query = vec![("since", since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))];
    if let Some(s) = &args.service {
        query.push(("service", s.clone()));
    }
    if let Some(k) = &args.kind {
        query.push(("kind", k.clone()));
    }
    let mut events: Vec<Value> = Vec::new();
    let mut cursor: Option<String> = None;
    while events.len() < usize::from(args.limit) {
        let mut q = query.clone();
        q.push(("limit", (args.limit - events.len() as u16).min(PAGE).to_string()));
        if let Some(c) = &cursor {
            q.push(("cursor", c.clone()));
        }
        let q: Vec<String> = q.iter().map(|(k, v)| format!("{k}={}", urlencode(v))).collect();
        let path = client.org_path(&format!("/meshes/{}/events?{}", args.mesh, q.join("&")));
        let page = client.call_json(reqwest::Method::GET, &path, &Value::Null).await?;
        events.extend(page["items"].as_array().cloned().unwrap_or_default());
        match page["nextCursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    print!("{}", event_table(&events));
    Ok(())
}

/// A draft policy as the YAML document `apply -f` reads, with a comment on where it came from.
fn draft_yaml(draft: &Value) -> anyhow::Result<String> {
    Ok(format!(
        "# A draft: review it, preview it with `trellis impact {} -f FILE`, then `trellis apply -f FILE`.\n{}",
        text(&draft["metadata"]["mesh"]),
        serde_yaml::to_string(draft)?
    ))
}

/// What an event's evidence says, in a few words.
fn evidence_summary(e: &Value) -> String {
    let ev = &e["evidence"];
    let n = |v: &Value| {
        v.as_f64().map(|f| format!("{}", (f * 100.0).round() / 100.0)).unwrap_or_else(|| "-".into())
    };
    match e["kind"].as_str().unwrap_or("") {
        "new-caller" => format!(
            "{} calls; not seen in {} days (known callers: {})",
            n(&ev["calls"]),
            n(&ev["lookBackDays"]),
            ev["knownCallers"]
                .as_array()
                .map(|c| c.iter().map(text).collect::<Vec<_>>().join(", "))
                .unwrap_or_default()
        ),
        "denied-burst" => format!(
            "{} denials in the minute (recent median {}/min)",
            n(&ev["denials"]),
            n(&ev["recentMedian"])
        ),
        "rate-jump" => format!(
            "{} {} calls/min (recent median {}, range {}..{})",
            text(&ev["direction"]),
            n(&ev["callsPerMinute"]),
            n(&ev["recentMedian"]),
            n(&ev["recentMin"]),
            n(&ev["recentMax"])
        ),
        "error-rate-jump" => format!(
            "error rate {}% ({} of {}; recent median {}%)",
            n(&Value::from(ev["errorRate"].as_f64().unwrap_or(0.0) * 100.0)),
            n(&ev["failures"]),
            n(&ev["requests"]),
            n(&Value::from(ev["recentMedian"].as_f64().unwrap_or(0.0) * 100.0))
        ),
        _ => ev.to_string(),
    }
}

/// Events, newest first: one row each, with the id `--draft` takes.
fn event_table(events: &[Value]) -> String {
    let rows: Vec<[String; 6]> = events
        .iter()
        .map(|e| {
            let minute = e["minute"].as_str().unwrap_or("").to_owned();
            [
                minute.split('.').next().unwrap_or(&minute).trim_end_matches('Z').to_owned() + "Z",
                text(&e["kind"]),
                e["source"].as_str().unwrap_or("*").to_owned(),
                text(&e["destination"]),
                evidence_summary(e),
                text(&e["id"]),
            ]
        })
        .collect();
    table(["MINUTE", "KIND", "SOURCE", "DESTINATION", "EVIDENCE", "ID"], &rows)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_denial_reads_as_one_paragraph_naming_the_rule_and_what_became_of_it() {
        let why = json!({
            "entry": {"method": "GET", "path": "/admin", "source": {"service": "productpage"},
                "destination": {"service": "reviews"}, "status": 403, "loggedAt": "2026-12-02T20:00:00Z",
                "reporter": "reviews", "outcome": "denied"},
            "decision": {"kind": "deny-rule", "summary": "denied by rule 0 of AccessPolicy guard"},
            "rule": {"policy": "guard", "rule": 0, "exists": false, "changedSinceEntry": true, "ruleNow": null},
            "meshRevisionAtEntry": 7,
        });
        let text = why_paragraph(&why);
        assert_eq!(
            text,
            "GET /admin from productpage to reviews at 2026-12-02T20:00:00Z, status 403 (logged by reviews's \
             proxy, denied): denied by rule 0 of AccessPolicy guard. rule 0 of AccessPolicy guard has been \
             deleted since. The mesh was at revision 7 when the call was recorded."
        );
        assert!(!text.contains('\n'));
    }

    #[test]
    fn events_read_as_a_table_with_their_evidence() {
        let e = json!({"id": "e1", "kind": "new-caller", "minute": "2026-12-03T07:00:00Z", "source": "intruder",
            "destination": "reviews", "evidence": {"kind": "new-caller", "calls": 5, "lookBackDays": 7.0,
            "knownCallers": ["productpage"], "knownCallersTotal": 1}});
        let b = json!({"id": "e2", "kind": "denied-burst", "minute": "2026-12-03T07:01:00Z", "source": null,
            "destination": "db", "evidence": {"kind": "denied-burst", "denials": 52, "recentMedian": 2.0}});
        assert_eq!(
            event_table(&[e, b]),
            "MINUTE                 KIND           SOURCE     DESTINATION   EVIDENCE                                                   ID\n\
             2026-12-03T07:00:00Z   new-caller     intruder   reviews       5 calls; not seen in 7 days (known callers: productpage)   e1\n\
             2026-12-03T07:01:00Z   denied-burst   *          db            52 denials in the minute (recent median 2/min)             e2\n"
        );
    }

    #[test]
    fn tables_align_their_columns() {
        let t = table(["A", "LONGER"], &[["xyz".into(), "1".into()]]);
        assert_eq!(t, "A     LONGER\nxyz   1\n");
    }
}
