//! The access log: one JSON line on stdout per denied or failed request or connection, per
//! call an audit rule matched and per sampled success, and the same entries pushed to the control plane as Envoy pushes its own
//! (`AccessLogService/StreamAccessLogs`, `HttpAccessLogEntry`/`TcpAccessLogEntry`, denials
//! named in Envoy's response details, audit matches in its RBAC metadata: `contract::rbac`),
//! so that one ingestion path serves Envoy and the agent. The data path only queues an entry
//! (bounded; what does not fit is dropped and counted on `/metrics`); one task writes and
//! sends.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use envoy_types::pb::envoy::config::core::v3::{
    Address, Metadata, Node, RequestMethod, SocketAddress, address, socket_address,
};
use envoy_types::pb::envoy::data::accesslog::v3::tls_properties::CertificateProperties;
use envoy_types::pb::envoy::data::accesslog::v3::tls_properties::certificate_properties::{
    SubjectAltName, subject_alt_name::San,
};
use envoy_types::pb::envoy::data::accesslog::v3::{
    AccessLogCommon, HttpAccessLogEntry, HttpRequestProperties, HttpResponseProperties, ResponseFlags,
    TcpAccessLogEntry, TlsProperties,
};
use envoy_types::pb::envoy::service::accesslog::v3::StreamAccessLogsMessage;
use envoy_types::pb::envoy::service::accesslog::v3::access_log_service_client::AccessLogServiceClient;
use envoy_types::pb::envoy::service::accesslog::v3::stream_access_logs_message::{
    HttpAccessLogEntries, Identifier, LogEntries, TcpAccessLogEntries,
};
use envoy_types::pb::google::protobuf::value::Kind;
use envoy_types::pb::google::protobuf::{Duration as PbDuration, Struct, Timestamp, UInt32Value, Value};
use rand::Rng;
use tokio::sync::mpsc;
use trellis_ca::SpiffeId;
use trellis_xds::contract::{access_log_name, rbac};

use crate::config::Denial;
use crate::control::ControlPlane;
use crate::identity::Identity;
use crate::metrics::Metrics;

/// Entries queued between the data path and the writer; more are dropped.
const QUEUE: usize = 4_096;
/// Entries kept for the control plane while it is unreachable; older ones are dropped.
const BACKLOG: usize = 10_000;
/// Most entries in one message (the control plane accepts 1,000).
const PER_MESSAGE: usize = 500;
/// Longest text kept of a path, an authority or a detail.
const MAX_FIELD: usize = 1_024;

/// Why an entry is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Denied,
    /// A 5xx, a reset, a timeout, a refused connection.
    Failed,
    /// Let through, and an audit rule matched.
    Audited,
    Sampled,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Denied => "denied",
            Outcome::Failed => "error",
            Outcome::Audited => "audited",
            Outcome::Sampled => "sampled",
        }
    }
}

/// What the data path learned about one request beyond its status, handed back beside the
/// response from where it is decided to where it is logged.
#[derive(Debug, Clone, Default)]
pub struct Note {
    pub denial: Option<Denial>,
    /// The first audit policy that matched.
    pub audited: Option<String>,
    /// Why the agent answered itself (a failure), if it did.
    pub detail: Option<String>,
    /// The upstream cluster the request went to.
    pub cluster: Option<String>,
    /// The request timed out (Envoy's `UT`).
    pub timed_out: bool,
    /// Fault injection aborted it (`FI`) or delayed it (`DI`).
    pub fault_injected: bool,
    pub delay_injected: bool,
}

impl Note {
    /// Envoy's short response flags for what the note says.
    pub fn flags(&self) -> Vec<&'static str> {
        [(self.timed_out, "UT"), (self.delay_injected, "DI"), (self.fault_injected, "FI")]
            .into_iter()
            .filter_map(|(set, flag)| set.then_some(flag))
            .collect()
    }
}

/// The request part of an HTTP entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpCall {
    pub method: String,
    pub path: String,
    pub authority: Option<String>,
    pub status: u16,
}

/// One logged request (`http`) or connection.
#[derive(Debug, Clone)]
pub struct Entry {
    pub time: SystemTime,
    pub outcome: Outcome,
    pub inbound: bool,
    pub http: Option<HttpCall>,
    /// The caller's SPIFFE ID (inbound) or the destination's (outbound), when known.
    pub peer: Option<SpiffeId>,
    /// The destination's service (outbound), from the listener.
    pub destination_service: Option<String>,
    pub remote: Option<SocketAddr>,
    pub duration: Duration,
    pub note: Note,
}

/// The data path's handle on the access log.
#[derive(Clone)]
pub struct AccessLog {
    queue: mpsc::Sender<Entry>,
    /// Share of successes kept, 0 to 1.
    sample: f64,
    metrics: Metrics,
}

impl AccessLog {
    /// The handle, and the queue's other end for [`run`].
    pub fn new(sample_percent: f64, metrics: Metrics) -> (AccessLog, mpsc::Receiver<Entry>) {
        let (queue, rx) = mpsc::channel(QUEUE);
        (AccessLog { queue, sample: sample_percent / 100.0, metrics }, rx)
    }

    /// Whether a call is logged, and why: every denial, failure and audit rule's match, a
    /// sample of the rest.
    pub fn keeps(&self, denied: bool, failed: bool, audited: bool) -> Option<Outcome> {
        if denied {
            Some(Outcome::Denied)
        } else if failed {
            Some(Outcome::Failed)
        } else if audited {
            Some(Outcome::Audited)
        } else {
            (self.sample > 0.0 && rand::rng().random::<f64>() < self.sample).then_some(Outcome::Sampled)
        }
    }

    /// Queues an entry; never waits. A full queue drops it, counted.
    pub fn log(&self, entry: Entry) {
        if self.queue.try_send(entry).is_err() {
            self.metrics.access_log_dropped("queue_full", 1);
        }
    }
}

fn bounded(s: &str) -> String {
    let mut end = s.len().min(MAX_FIELD);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

/// The service of a workload SPIFFE ID (`…/sa/<service>`).
fn service_of(id: &SpiffeId) -> Option<&str> {
    id.path().strip_prefix('/')?.split('/').collect::<Vec<_>>().get(3).copied()
}

/// An entry as one line of JSON; `me` is the agent's own identity.
pub fn json_line(e: &Entry, me: &SpiffeId) -> String {
    let peer = e.peer.as_ref();
    let side = |id: Option<&SpiffeId>, service: Option<&str>| {
        serde_json::json!({
            "service": service.or_else(|| id.and_then(service_of)),
            "spiffeId": id.map(SpiffeId::as_str),
        })
    };
    let (source, destination) = if e.inbound {
        (side(peer, None), side(Some(me), None))
    } else {
        (side(Some(me), None), side(peer, e.destination_service.as_deref()))
    };
    let time =
        chrono::DateTime::<chrono::Utc>::from(e.time).to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let mut line = serde_json::json!({
        "time": time,
        "log": "access",
        "outcome": e.outcome.as_str(),
        "direction": if e.inbound { "inbound" } else { "outbound" },
        "protocol": if e.http.is_some() { "http" } else { "tcp" },
        "source": source,
        "destination": destination,
        "durationMs": e.duration.as_secs_f64() * 1e3,
    });
    let fields = line.as_object_mut().expect("an object");
    if let Some(h) = &e.http {
        fields.insert("method".into(), h.method.clone().into());
        fields.insert("path".into(), bounded(&h.path).into());
        fields.insert("status".into(), h.status.into());
    }
    if let Some(d) = &e.note.denial {
        fields.insert("policy".into(), d.policy.as_deref().unwrap_or(rbac::NO_POLICY).into());
        fields.insert("filter".into(), d.filter.clone().into());
    }
    if let Some(a) = &e.note.audited {
        fields.insert("auditPolicy".into(), a.clone().into());
    }
    if let Some(d) = &e.note.detail {
        fields.insert("detail".into(), bounded(d).into());
    }
    let flags = e.note.flags();
    if !flags.is_empty() {
        fields.insert("responseFlags".into(), flags.join(",").into());
    }
    line.to_string()
}

fn timestamp(t: SystemTime) -> Timestamp {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    Timestamp { seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX), nanos: d.subsec_nanos() as i32 }
}

/// The fields Envoy's two entry types share, as Envoy fills them.
fn common(e: &Entry) -> AccessLogCommon {
    let tls_properties = e.peer.as_ref().map(|id| TlsProperties {
        peer_certificate_properties: Some(CertificateProperties {
            subject_alt_name: vec![SubjectAltName { san: Some(San::Uri(id.as_str().to_owned())) }],
            ..Default::default()
        }),
        ..Default::default()
    });
    let metadata = e.note.audited.as_ref().map(|policy| {
        let s = |v: &str| Value { kind: Some(Kind::StringValue(v.to_owned())) };
        let fields = HashMap::from([
            (format!("{}{}", rbac::AUDIT_STAT_PREFIX, rbac::SHADOW_POLICY_KEY), s(policy)),
            (format!("{}{}", rbac::AUDIT_STAT_PREFIX, rbac::SHADOW_RESULT_KEY), s("denied")),
        ]);
        let namespace =
            if e.http.is_some() { rbac::METADATA_NAMESPACES[0] } else { rbac::METADATA_NAMESPACES[1] };
        Metadata {
            filter_metadata: HashMap::from([(namespace.to_owned(), Struct { fields })]),
            ..Default::default()
        }
    });
    let duration = PbDuration {
        seconds: i64::try_from(e.duration.as_secs()).unwrap_or(i64::MAX),
        nanos: e.duration.subsec_nanos() as i32,
    };
    AccessLogCommon {
        start_time: Some(timestamp(e.time)),
        duration: Some(duration),
        downstream_remote_address: e.remote.map(|a| Address {
            address: Some(address::Address::SocketAddress(SocketAddress {
                address: a.ip().to_string(),
                port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(a.port()))),
                ..Default::default()
            })),
        }),
        tls_properties,
        upstream_cluster: e.note.cluster.clone().unwrap_or_default(),
        metadata,
        response_flags: (!e.note.flags().is_empty()).then(|| ResponseFlags {
            upstream_request_timeout: e.note.timed_out,
            delay_injected: e.note.delay_injected,
            fault_injected: e.note.fault_injected,
            ..Default::default()
        }),
        connection_termination_details: match (&e.http, &e.note.denial) {
            (None, Some(d)) => rbac::denied_details(d.policy.as_deref()),
            _ => String::new(),
        },
        ..Default::default()
    }
}

/// An HTTP entry as Envoy's gRPC access logger sends it.
pub fn http_entry(e: &Entry) -> Option<HttpAccessLogEntry> {
    let h = e.http.as_ref()?;
    let details = match (&e.note.denial, &e.note.detail) {
        (Some(d), _) => rbac::denied_details(d.policy.as_deref()),
        (None, Some(detail)) => bounded(detail),
        (None, None) => String::new(),
    };
    Some(HttpAccessLogEntry {
        common_properties: Some(common(e)),
        request: Some(HttpRequestProperties {
            request_method: RequestMethod::from_str_name(&h.method).map_or(0, |m| m as i32),
            authority: h.authority.as_deref().map(bounded).unwrap_or_default(),
            path: bounded(&h.path),
            ..Default::default()
        }),
        response: Some(HttpResponseProperties {
            response_code: Some(UInt32Value { value: u32::from(h.status) }),
            response_code_details: details,
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// A TCP entry as Envoy's gRPC access logger sends it.
pub fn tcp_entry(e: &Entry) -> Option<TcpAccessLogEntry> {
    e.http.is_none().then(|| TcpAccessLogEntry { common_properties: Some(common(e)), ..Default::default() })
}

/// The messages that carry `entries`: grouped by side and protocol, each naming its side as
/// Envoy's loggers do (`log_name`).
fn messages(entries: &[Entry], node: &Node) -> Vec<StreamAccessLogsMessage> {
    let mut out = Vec::new();
    for inbound in [true, false] {
        let side: Vec<&Entry> = entries.iter().filter(|e| e.inbound == inbound).collect();
        let identifier = || Identifier {
            node: Some(node.clone()),
            log_name: if inbound { access_log_name::INBOUND } else { access_log_name::OUTBOUND }.into(),
        };
        for chunk in side.chunks(PER_MESSAGE) {
            let http: Vec<_> = chunk.iter().filter_map(|e| http_entry(e)).collect();
            let tcp: Vec<_> = chunk.iter().filter_map(|e| tcp_entry(e)).collect();
            if !http.is_empty() {
                out.push(StreamAccessLogsMessage {
                    identifier: Some(identifier()),
                    log_entries: Some(LogEntries::HttpLogs(HttpAccessLogEntries { log_entry: http })),
                });
            }
            if !tcp.is_empty() {
                out.push(StreamAccessLogsMessage {
                    identifier: Some(identifier()),
                    log_entries: Some(LogEntries::TcpLogs(TcpAccessLogEntries { log_entry: tcp })),
                });
            }
        }
    }
    out
}

/// One open stream to the control plane.
struct Stream {
    tx: mpsc::Sender<StreamAccessLogsMessage>,
    call: tokio::task::JoinHandle<
        Result<
            tonic::Response<envoy_types::pb::envoy::service::accesslog::v3::StreamAccessLogsResponse>,
            tonic::Status,
        >,
    >,
}

impl Stream {
    fn open(cp: &ControlPlane, identity: &Identity) -> anyhow::Result<Stream> {
        let channel = cp.channel(Some(&identity.current()))?;
        let (tx, rx) = mpsc::channel(4);
        let call = tokio::spawn(async move {
            AccessLogServiceClient::new(channel)
                .stream_access_logs(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
        });
        Ok(Stream { tx, call })
    }

    async fn send(&self, messages: Vec<StreamAccessLogsMessage>) -> anyhow::Result<()> {
        for m in messages {
            if self.call.is_finished() {
                anyhow::bail!("the access-log stream ended");
            }
            tokio::time::timeout(Duration::from_secs(5), self.tx.send(m))
                .await
                .map_err(|_| anyhow::anyhow!("the access-log stream is stuck"))?
                .map_err(|_| anyhow::anyhow!("the access-log stream ended"))?;
        }
        Ok(())
    }
}

/// Where entries go besides stdout.
pub struct Upstream {
    pub cp: ControlPlane,
    pub identity: Arc<Identity>,
    pub node: Node,
}

/// Writes each queued entry to stdout as it comes, and sends them to the control plane over
/// one long-lived stream (when `upstream` is set), keeping a bounded backlog while it is
/// unreachable and reconnecting with jittered backoff.
pub async fn run(mut rx: mpsc::Receiver<Entry>, me: SpiffeId, metrics: Metrics, upstream: Option<Upstream>) {
    use std::io::Write as _;
    let mut backlog: VecDeque<Entry> = VecDeque::new();
    let mut stream: Option<Stream> = None;
    let mut backoff = Duration::from_millis(500);
    let mut retry_at = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        let mut batch = Vec::new();
        tokio::select! {
            got = rx.recv_many(&mut batch, PER_MESSAGE) => if got == 0 { return },
            _ = tick.tick(), if !backlog.is_empty() => {}
        }
        if !batch.is_empty() {
            let mut out = std::io::stdout().lock();
            for e in &batch {
                let _ = writeln!(out, "{}", json_line(e, &me));
            }
        }
        let Some(up) = &upstream else { continue };
        backlog.extend(batch);
        let over = backlog.len().saturating_sub(BACKLOG);
        if over > 0 {
            backlog.drain(..over);
            metrics.access_log_dropped("backlog_full", over as u64);
        }
        if backlog.is_empty() || tokio::time::Instant::now() < retry_at {
            continue;
        }
        let sent = async {
            if stream.is_none() {
                stream = Some(Stream::open(&up.cp, &up.identity)?);
            }
            let entries: Vec<Entry> = backlog.iter().cloned().collect();
            stream.as_ref().expect("opened above").send(messages(&entries, &up.node)).await
        }
        .await;
        match sent {
            Ok(()) => {
                backlog.clear();
                backoff = Duration::from_millis(500);
            }
            Err(e) => {
                tracing::debug!(error = %format!("{e:#}"), "access-log stream failed; will retry");
                stream = None;
                retry_at = tokio::time::Instant::now() + backoff.mul_f64(rand::rng().random_range(0.5..=1.0));
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(service: &str) -> SpiffeId {
        SpiffeId::parse(&format!("spiffe://shop.acme.test/ns/shop/sa/{service}")).unwrap()
    }

    fn denied_entry() -> Entry {
        Entry {
            time: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            outcome: Outcome::Denied,
            inbound: true,
            http: Some(HttpCall {
                method: "DELETE".into(),
                path: "/reviews/1".into(),
                authority: Some("reviews.shop:9080".into()),
                status: 403,
            }),
            peer: Some(id("productpage")),
            destination_service: None,
            remote: Some("127.0.0.9:4242".parse().unwrap()),
            duration: Duration::from_micros(1_500),
            note: Note {
                denial: Some(Denial {
                    filter: "trellis.rbac.deny".into(),
                    policy: Some("no-deletes/rules/0".into()),
                }),
                audited: Some("watch/rules/1".into()),
                ..Default::default()
            },
        }
    }

    #[test]
    fn only_denials_failures_and_the_sample_are_kept() {
        let (never, _rx) = AccessLog::new(0.0, Metrics::default());
        assert_eq!(never.keeps(true, false, true), Some(Outcome::Denied));
        assert_eq!(never.keeps(false, true, false), Some(Outcome::Failed));
        assert_eq!(never.keeps(false, false, true), Some(Outcome::Audited));
        assert_eq!(never.keeps(false, false, false), None);
        let (always, _rx) = AccessLog::new(100.0, Metrics::default());
        assert_eq!(always.keeps(false, false, false), Some(Outcome::Sampled));
    }

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_waiting() {
        let metrics = Metrics::default();
        let (log, _rx) = AccessLog::new(0.0, metrics.clone());
        for _ in 0..QUEUE + 3 {
            log.log(denied_entry());
        }
        assert!(metrics.encode().contains("trellis_agent_access_log_dropped_total{reason=\"queue_full\"} 3"));
    }

    #[test]
    fn a_denial_is_one_json_line_naming_the_rule() {
        let line = json_line(&denied_entry(), &id("reviews"));
        assert!(!line.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["time"], "2023-11-14T22:13:20.000Z");
        assert_eq!(v["outcome"], "denied");
        assert_eq!(v["direction"], "inbound");
        assert_eq!(v["source"]["service"], "productpage");
        assert_eq!(v["source"]["spiffeId"], "spiffe://shop.acme.test/ns/shop/sa/productpage");
        assert_eq!(v["destination"]["service"], "reviews");
        assert_eq!(
            (v["method"].as_str(), v["path"].as_str(), v["status"].as_u64()),
            (Some("DELETE"), Some("/reviews/1"), Some(403))
        );
        assert_eq!(v["policy"], "no-deletes/rules/0");
        assert_eq!(v["auditPolicy"], "watch/rules/1");
        assert_eq!(v["durationMs"], 1.5);
    }

    #[test]
    fn entries_are_sent_as_envoy_formats_them() {
        let e = denied_entry();
        let http = http_entry(&e).unwrap();
        let response = http.response.as_ref().unwrap();
        assert_eq!(response.response_code_details, "rbac_access_denied_matched_policy[no-deletes/rules/0]");
        assert_eq!(response.response_code.as_ref().unwrap().value, 403);
        assert_eq!(http.request.as_ref().unwrap().request_method, RequestMethod::Delete as i32);
        let common = http.common_properties.as_ref().unwrap();
        let rbac_meta = &common.metadata.as_ref().unwrap().filter_metadata["envoy.filters.http.rbac"];
        assert_eq!(
            rbac_meta.fields["trellis_audit_shadow_effective_policy_id"].kind,
            Some(Kind::StringValue("watch/rules/1".into()))
        );
        let san = &common
            .tls_properties
            .as_ref()
            .unwrap()
            .peer_certificate_properties
            .as_ref()
            .unwrap()
            .subject_alt_name;
        assert_eq!(san[0].san, Some(San::Uri("spiffe://shop.acme.test/ns/shop/sa/productpage".into())));
        // A connection refused for want of an identity: TCP, `none` in its termination details.
        let plaintext = Entry {
            http: None,
            peer: None,
            note: Note { denial: Some(Denial { filter: "mtls".into(), policy: None }), ..Default::default() },
            ..denied_entry()
        };
        let tcp = tcp_entry(&plaintext).unwrap();
        assert_eq!(
            tcp.common_properties.as_ref().unwrap().connection_termination_details,
            "rbac_access_denied_matched_policy[none]"
        );
        let node = Node { id: "reviews-1".into(), ..Default::default() };
        let outbound = Entry { inbound: false, ..denied_entry() };
        let sent = messages(&[e, plaintext, outbound], &node);
        let names: Vec<_> = sent.iter().map(|m| m.identifier.as_ref().unwrap().log_name.as_str()).collect();
        assert_eq!(names, ["trellis-inbound", "trellis-inbound", "trellis-outbound"]);
    }
}
