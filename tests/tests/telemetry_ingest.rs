//! Telemetry ingestion as a proxy meets it on the TLS port, with a real tonic client and
//! SVIDs issued through join tokens: Envoy-shaped `StreamMetrics` and `StreamAccessLogs`
//! messages are stored under the certificate's organization, mesh and service, cumulative
//! counters as what grew, and hostile input is refused, bounded and counted.

use std::time::Duration;

use chrono::{TimeDelta, Utc};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::data::accesslog::v3::tls_properties::CertificateProperties;
use envoy_types::pb::envoy::data::accesslog::v3::tls_properties::certificate_properties::SubjectAltName;
use envoy_types::pb::envoy::data::accesslog::v3::tls_properties::certificate_properties::subject_alt_name::San;
use envoy_types::pb::envoy::data::accesslog::v3::{
    AccessLogCommon, HttpAccessLogEntry, HttpRequestProperties, HttpResponseProperties, TlsProperties,
};
use envoy_types::pb::envoy::service::accesslog::v3::StreamAccessLogsMessage;
use envoy_types::pb::envoy::service::accesslog::v3::access_log_service_client::AccessLogServiceClient;
use envoy_types::pb::envoy::service::accesslog::v3::stream_access_logs_message::{
    HttpAccessLogEntries, Identifier as LogIdentifier, LogEntries,
};
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::metrics::v3::StreamMetricsMessage;
use envoy_types::pb::envoy::service::metrics::v3::metrics_service_client::MetricsServiceClient;
use envoy_types::pb::envoy::service::metrics::v3::stream_metrics_message::Identifier;
use envoy_types::pb::google::protobuf::UInt32Value;
use envoy_types::pb::io::prometheus::client::{
    Bucket, Counter, Gauge, Histogram, Metric, MetricFamily, MetricType,
};
use serde_json::json;
use tokio_stream::wrappers::ReceiverStream;
use trellis_model::telemetry::{EdgeTotal, Resolution, bucket_upper_bounds_ms};
use trellis_model::{MeshId, MeshName, OrgId, OrgSlug, Role};
use trellis_store::AccessLogQuery;
use trellis_store::testing::TestDb;
use trellis_tests::grpc::{Svid, channel, issue, join_token};
use trellis_tests::{Api, Trellis, token};

struct Fixture {
    db: TestDb,
    t: Trellis,
    api: Api,
    store: trellis_store::Store,
    root: String,
}

async fn fixture(env: &[(&str, &str)]) -> Fixture {
    let db = TestDb::create().await;
    let (t, api, store, root) = trellis_tests::serve_example_mesh(&db, env).await;
    Fixture { db, t, api, store, root }
}

impl Fixture {
    async fn svid(&self, org: &str, service: &str) -> Svid {
        issue(&self.t.xds, &self.root, &join_token(&self.store, org, "shop", service).await).await.unwrap()
    }

    async fn metrics(&self, svid: Option<&Svid>) -> MetricsServiceClient<tonic::transport::Channel> {
        MetricsServiceClient::new(channel(&self.t.xds, &self.root, svid).await.unwrap())
    }

    async fn logs(&self, svid: Option<&Svid>) -> AccessLogServiceClient<tonic::transport::Channel> {
        AccessLogServiceClient::new(channel(&self.t.xds, &self.root, svid).await.unwrap())
    }

    async fn mesh(&self, org: &str) -> (OrgId, MeshId) {
        let org = self.store.org_by_slug(&OrgSlug::parse(org).unwrap()).await.unwrap().unwrap();
        let mut tx = self.store.tenant(org.id).await.unwrap();
        let mesh = tx.mesh_by_name(&MeshName::parse("shop").unwrap()).await.unwrap().unwrap();
        tx.commit().await.unwrap();
        (org.id, mesh.id)
    }

    /// The edges of `org`'s mesh `shop` over the last ten minutes.
    async fn edges(&self, org: &str) -> Vec<EdgeTotal> {
        let (org, mesh) = self.mesh(org).await;
        let mut tx = self.store.tenant(org).await.unwrap();
        let now = Utc::now();
        let edges = tx
            .edge_totals(
                mesh,
                Resolution::TenSeconds,
                now - TimeDelta::minutes(10),
                now + TimeDelta::minutes(1),
            )
            .await
            .unwrap();
        tx.commit().await.unwrap();
        edges
    }

    /// Polls until `org`'s edges satisfy `done` (the writer stores behind the stream).
    async fn edges_when(&self, org: &str, done: impl Fn(&[EdgeTotal]) -> bool) -> Vec<EdgeTotal> {
        for _ in 0..100 {
            let edges = self.edges(org).await;
            if done(&edges) {
                return edges;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("edges never came: {:?}", self.edges(org).await);
    }

    /// A labelled counter of the server's `/metrics`, 0 when absent.
    async fn dropped(&self, reason: &str) -> f64 {
        let body = self.t.get("/metrics").await.text().await.unwrap();
        let series = format!("trellis_telemetry_dropped_total{{reason=\"{reason}\"}} ");
        body.lines().find_map(|l| l.strip_prefix(&series)?.trim().parse().ok()).unwrap_or(0.0)
    }
}

fn counter(name: &str, value: f64) -> MetricFamily {
    MetricFamily {
        name: Some(name.into()),
        r#type: Some(MetricType::Counter as i32),
        metric: vec![Metric {
            counter: Some(Counter { value: Some(value), ..Default::default() }),
            timestamp_ms: Some(Utc::now().timestamp_millis()),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// Envoy's histogram with the bounds the bootstrap gives it (ours): `latencies_ms` recorded.
fn rq_time(cluster: &str, latencies_ms: &[f64]) -> MetricFamily {
    let bounds = bucket_upper_bounds_ms();
    let bucket = bounds
        .iter()
        .map(|b| Bucket {
            upper_bound: Some(*b),
            cumulative_count: Some(latencies_ms.iter().filter(|l| **l <= *b).count() as u64),
            ..Default::default()
        })
        .collect();
    MetricFamily {
        name: Some(format!("cluster.{cluster}.upstream_rq_time")),
        r#type: Some(MetricType::Histogram as i32),
        metric: vec![Metric {
            histogram: Some(Histogram {
                sample_count: Some(latencies_ms.len() as u64),
                sample_sum: Some(latencies_ms.iter().sum()),
                bucket,
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// One flush of an Envoy whose cluster `reviews.shop:9080~version=v2` has served `ok` 2xx
/// and `failed` 5xx requests since it started, with these latencies.
fn flush(first: bool, ok: u32, failed: u32, latencies_ms: &[f64]) -> StreamMetricsMessage {
    let c = "reviews.shop:9080~version=v2";
    StreamMetricsMessage {
        // Envoy names itself on the first message only.
        identifier: first.then(|| Identifier {
            node: Some(Node {
                id: "productpage-1".into(),
                cluster: "productpage".into(),
                ..Default::default()
            }),
        }),
        envoy_metrics: vec![
            counter(&format!("cluster.{c}.upstream_rq_2xx"), f64::from(ok)),
            counter(&format!("cluster.{c}.upstream_rq_200"), f64::from(ok)),
            counter(&format!("cluster.{c}.upstream_rq_5xx"), f64::from(failed)),
            counter(&format!("cluster.{c}.upstream_rq_total"), f64::from(ok + failed)),
            counter(&format!("cluster.{c}.upstream_cx_total"), 2.0),
            counter("cluster.inbound:9080.upstream_rq_2xx", 1_000.0),
            counter("cluster.xds.upstream_rq_2xx", 7.0),
            counter("server.uptime", 30.0),
            rq_time(c, latencies_ms),
        ],
    }
}

/// Sends `messages` on one stream, then closes it; the server's answer.
async fn stream_metrics(
    client: &mut MetricsServiceClient<tonic::transport::Channel>,
    messages: Vec<StreamMetricsMessage>,
) -> Result<(), tonic::Status> {
    let (tx, rx) = tokio::sync::mpsc::channel(messages.len().max(1));
    for m in messages {
        tx.send(m).await.unwrap();
    }
    drop(tx);
    client.stream_metrics(ReceiverStream::new(rx)).await.map(|_| ())
}

#[tokio::test]
async fn envoy_shaped_metrics_become_edges_of_the_certificates_service_counting_what_grew() {
    let f = fixture(&[]).await;
    let svid = f.svid("acme", "productpage").await;
    let mut client = f.metrics(Some(&svid)).await;
    let early = [3.0, 4.0, 250.0];
    let later = [3.0, 4.0, 250.0, 5.0, 5.0, 6.0, 900.0, 40.0];
    stream_metrics(
        &mut client,
        vec![flush(true, 10, 1, &early), flush(false, 25, 3, &later[..5]), flush(false, 40, 4, &later)],
    )
    .await
    .unwrap();
    let edges = f.edges_when("acme", |e| e.iter().map(|e| e.counts.requests).sum::<u64>() >= 33).await;
    // Exactly one edge, from the certificate's service to the cluster's; the inbound and xDS
    // clusters are not edges. The first flush is the baseline: 40 − 10 and 4 − 1 grew since.
    assert_eq!(edges.len(), 1, "{edges:?}");
    let e = &edges[0];
    assert_eq!((e.source.as_str(), e.destination.as_str()), ("productpage", "reviews"));
    assert_eq!((e.counts.requests, e.counts.successes), (33, 30));
    assert_eq!(e.counts.latency.total(), 5, "the five requests observed after the first flush");
    let p99 = e.counts.latency.quantile_ms(0.99).unwrap();
    assert!((p99 - 900.0).abs() / 900.0 <= trellis_model::telemetry::QUANTILE_RELATIVE_ERROR, "{p99}");
    // The REST API shows the same figures: topology and the service's golden metrics.
    let (status, body) = f.api.get("/meshes/shop/topology?window=600").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["nodes"].as_array().unwrap().len(), 2, "{body}");
    assert_eq!(body["edges"][0]["source"], "productpage");
    assert_eq!(body["edges"][0]["metrics"]["requests"], 33);
    let rate = body["edges"][0]["metrics"]["successRate"].as_f64().unwrap();
    assert!((rate - 30.0 / 33.0).abs() < 1e-9, "{rate}");
    // The cluster's subset is kept: every call went to reviews v2.
    assert_eq!(
        body["edges"][0]["subsets"],
        json!([{ "tags": { "version": "v2" }, "requests": 33, "share": 1.0 }])
    );
    assert_eq!(body["resolutionSeconds"], 10);
    let (status, body) = f.api.get("/meshes/shop/services/reviews/metrics").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["inbound"]["requests"], 33);
    assert_eq!(body["callers"][0]["source"], "productpage");
    assert_eq!(body["callees"], json!([]));
    let p99 = body["inbound"]["p99Ms"].as_f64().unwrap();
    assert!((p99 - 900.0).abs() / 900.0 <= trellis_model::telemetry::QUANTILE_RELATIVE_ERROR, "{p99}");
    let (status, body) = f.api.get("/meshes/shop/topology?window=5").await;
    assert_eq!(status, 400, "{body}");
    // A new stream (a reconnect) starts from a new baseline: nothing is counted twice.
    stream_metrics(&mut client, vec![flush(true, 40, 4, &later)]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(f.edges("acme").await[0].counts.requests, 33);
}

#[tokio::test]
async fn a_proxy_reports_only_for_its_own_mesh_and_service_and_needs_a_certificate() {
    let f = fixture(&[]).await;
    // Another organization with a mesh of the same name and the same services.
    let other = Api::new(&f.t, "globex", &token(&f.db, "globex", Role::Admin).await);
    let (status, body) = other.put("/meshes/shop", &json!({"spec": {}})).await;
    assert_eq!(status, 201, "{body}");
    let svc = json!({"spec": {"ports": [{"port": 9080, "protocol": "http"}]}});
    for name in ["reviews", "productpage"] {
        let (status, body) = other.put(&format!("/meshes/shop/services/{name}"), &svc).await;
        assert_eq!(status, 201, "{body}");
    }
    // Globex's proxy reports with a node that claims to be acme's productpage.
    let theirs = f.svid("globex", "reviews").await;
    let mut node_claim = flush(true, 0, 0, &[]);
    node_claim.identifier = Some(Identifier {
        node: Some(Node {
            id: "productpage-1".into(),
            cluster: "acme/productpage".into(),
            ..Default::default()
        }),
    });
    stream_metrics(&mut f.metrics(Some(&theirs)).await, vec![node_claim, flush(false, 50, 0, &[])])
        .await
        .unwrap();
    let globex = f.edges_when("globex", |e| !e.is_empty()).await;
    assert_eq!(globex.len(), 1);
    assert_eq!((globex[0].source.as_str(), globex[0].counts.requests), ("reviews", 50));
    assert!(f.edges("acme").await.is_empty(), "nothing reached acme's mesh of the same name");
    let (_, body) = f.api.get("/meshes/shop/topology").await;
    assert_eq!(body["edges"], json!([]), "acme's API shows none of globex's traffic");
    let (_, body) = other.get("/meshes/shop/topology").await;
    assert_eq!(body["edges"][0]["metrics"]["requests"], 50);

    // Without a client certificate, or with none the mesh issued, no stream.
    let refused = stream_metrics(&mut f.metrics(None).await, vec![flush(true, 1, 0, &[])]).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(StreamAccessLogsMessage::default()).await.unwrap();
    drop(tx);
    let refused = f.logs(None).await.stream_access_logs(ReceiverStream::new(rx)).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
}

fn denied_call(path: &str) -> HttpAccessLogEntry {
    HttpAccessLogEntry {
        common_properties: Some(AccessLogCommon {
            start_time: Some(envoy_types::pb::google::protobuf::Timestamp {
                seconds: Utc::now().timestamp(),
                nanos: 0,
            }),
            tls_properties: Some(TlsProperties {
                peer_certificate_properties: Some(CertificateProperties {
                    subject_alt_name: vec![SubjectAltName {
                        san: Some(San::Uri(
                            "spiffe://shop.acme.trellis.internal/ns/shop/sa/productpage".into(),
                        )),
                    }],
                    ..Default::default()
                }),
                ..Default::default()
            }),
            upstream_cluster: "inbound:9080".into(),
            ..Default::default()
        }),
        request: Some(HttpRequestProperties {
            request_method: envoy_types::pb::envoy::config::core::v3::RequestMethod::Post as i32,
            path: path.into(),
            authority: "reviews".into(),
            ..Default::default()
        }),
        response: Some(HttpResponseProperties {
            response_code: Some(UInt32Value { value: 403 }),
            response_code_details: "rbac_access_denied_matched_policy[reviews-callers/rules/0]".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[tokio::test]
async fn access_logs_keep_denials_with_the_policy_and_hostile_input_is_refused_and_counted() {
    let f = fixture(&[("TRELLIS_TELEMETRY_INGEST_RATE", "50")]).await;
    let svid = f.svid("acme", "reviews").await;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(StreamAccessLogsMessage {
        identifier: Some(LogIdentifier { node: None, log_name: "trellis-inbound".into() }),
        log_entries: Some(LogEntries::HttpLogs(HttpAccessLogEntries {
            log_entry: vec![denied_call("/reviews/1"), denied_call("/reviews/2")],
        })),
    })
    .await
    .unwrap();
    drop(tx);
    f.logs(Some(&svid)).await.stream_access_logs(ReceiverStream::new(rx)).await.unwrap();
    let (org, mesh) = f.mesh("acme").await;
    let mut found = Vec::new();
    for _ in 0..100 {
        let mut tx = f.store.tenant(org).await.unwrap();
        found = tx
            .access_log(&AccessLogQuery {
                mesh,
                since: Utc::now() - TimeDelta::minutes(5),
                until: Utc::now() + TimeDelta::minutes(1),
                service: None,
                status: None,
                denied_only: true,
                after: None,
                limit: 10,
            })
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.record)
            .collect();
        tx.commit().await.unwrap();
        if found.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(found.len(), 2);
    let d = &found[0];
    assert_eq!(d.reporter, "reviews");
    assert_eq!(d.direction, "inbound");
    assert_eq!(d.source_service.as_deref(), Some("productpage"));
    assert_eq!(d.destination_service.as_deref(), Some("reviews"));
    assert_eq!(d.rbac_policy.as_deref(), Some("reviews-callers/rules/0"));
    assert_eq!((d.method.as_deref(), d.status), (Some("POST"), Some(403)));

    let mut client = f.metrics(Some(&svid)).await;
    // More families in a message than allowed: an error naming the bound, counted.
    let flood: Vec<MetricFamily> =
        (0..=trellis_xds_server::MAX_FAMILIES).map(|i| counter(&format!("x{i}"), 1.0)).collect();
    let err =
        stream_metrics(&mut client, vec![StreamMetricsMessage { identifier: None, envoy_metrics: flood }])
            .await
            .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("at most"), "{err:?}");
    assert_eq!(f.dropped("too_large").await, (trellis_xds_server::MAX_FAMILIES + 1) as f64);
    // A message over the size bound is refused by the transport, and the server lives on.
    let huge = counter(&"y".repeat(5 * 1024 * 1024), 1.0);
    let err = stream_metrics(
        &mut client,
        vec![StreamMetricsMessage { identifier: None, envoy_metrics: vec![huge] }],
    )
    .await
    .unwrap_err();
    assert!(matches!(err.code(), tonic::Code::OutOfRange | tonic::Code::ResourceExhausted), "{err:?}");
    // Garbage values and names are ignored without harm.
    let garbage = vec![
        counter("cluster.reviews.shop:9080.upstream_rq_2xx", f64::NAN),
        counter("cluster..upstream_rq_2xx", 1.0),
        counter("cluster.reviews.shop:99999999999.upstream_rq_5xx", 1.0),
        MetricFamily::default(),
    ];
    let garbage = StreamMetricsMessage { identifier: None, envoy_metrics: garbage };
    stream_metrics(&mut client, vec![garbage.clone(), garbage]).await.unwrap();
    // Over the organization's rate (50 a second, bursts of 100): dropped and counted.
    let burst: Vec<StreamMetricsMessage> = (0..3).map(|_| flush(false, 1, 0, &[])).collect();
    let before = f.dropped("rate_limited").await;
    stream_metrics(&mut client, [burst.clone(), burst.clone(), burst.clone(), burst].concat()).await.unwrap();
    assert!(f.dropped("rate_limited").await > before, "the excess is counted");
    assert!(f.edges("acme").await.is_empty(), "nothing of the garbage became an edge");
}

/// Organization `globex` with a mesh `shop` holding `reviews` and `productpage`, as acme's.
async fn second_org(f: &Fixture) -> Api {
    let other = Api::new(&f.t, "globex", &token(&f.db, "globex", Role::Admin).await);
    let (status, body) = other.put("/meshes/shop", &json!({"spec": {}})).await;
    assert_eq!(status, 201, "{body}");
    let svc = json!({"spec": {"ports": [{"port": 9080, "protocol": "http"}]}});
    for name in ["reviews", "productpage"] {
        let (status, body) = other.put(&format!("/meshes/shop/services/{name}"), &svc).await;
        assert_eq!(status, 201, "{body}");
    }
    other
}

/// A flush reporting `value` 2xx responses from each of `n` destination services.
fn fan_out(n: usize, value: f64) -> StreamMetricsMessage {
    let envoy_metrics =
        (0..n).map(|i| counter(&format!("cluster.svc{i}.shop:9080.upstream_rq_2xx"), value)).collect();
    StreamMetricsMessage { identifier: None, envoy_metrics }
}

/// Polls a mesh's telemetry status until `done` (the writer stores drop counts each second).
async fn status_when(api: &Api, done: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    for _ in 0..100 {
        let (status, body) = api.get("/meshes/shop/telemetry/status?window=600").await;
        assert_eq!(status, 200, "{body}");
        if done(&body) {
            return body;
        }
        last = body;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the status never came: {last}");
}

fn dropped_for(status: &serde_json::Value, reason: &str) -> u64 {
    status["dropped"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["reason"] == reason)
        .map_or(0, |d| d["items"].as_u64().unwrap())
}

#[tokio::test]
async fn a_noisy_tenant_is_throttled_and_told_while_a_quiet_one_keeps_exact_figures() {
    let f = fixture(&[
        ("TRELLIS_TELEMETRY_INGEST_RATE", "100"),
        ("TRELLIS_TELEMETRY_SERIES_BUDGET", "5"),
        ("TRELLIS_TELEMETRY_LOG_BUDGET", "3"),
    ])
    .await;
    let noisy_api = second_org(&f).await;
    let quiet = f.svid("acme", "productpage").await;
    let noisy = f.svid("globex", "productpage").await;
    let (mut quiet_metrics, mut noisy_metrics, mut noisy_logs) =
        (f.metrics(Some(&quiet)).await, f.metrics(Some(&noisy)).await, f.logs(Some(&noisy)).await);

    // Both report at once. The quiet one: an ordinary proxy, 33 requests after its baseline.
    let quiet_reports = stream_metrics(
        &mut quiet_metrics,
        vec![flush(true, 10, 1, &[3.0]), flush(false, 25, 3, &[3.0, 4.0]), flush(false, 40, 4, &[3.0, 4.0])],
    );
    // The noisy one: 20 new series in one bucket against a budget of 5, five log entries
    // against 3, then floods far past its rate (100 a second, bursts of 200): each flood is
    // larger than a whole burst, so none fits however slowly a loaded machine sends them.
    let noisy_reports = async {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tx.send(StreamAccessLogsMessage {
            identifier: Some(LogIdentifier { node: None, log_name: "trellis-inbound".into() }),
            log_entries: Some(LogEntries::HttpLogs(HttpAccessLogEntries {
                log_entry: (0..5).map(|i| denied_call(&format!("/reviews/{i}"))).collect(),
            })),
        })
        .await
        .unwrap();
        drop(tx);
        noisy_logs.stream_access_logs(ReceiverStream::new(rx)).await.unwrap();
        let flood = StreamMetricsMessage {
            identifier: None,
            envoy_metrics: (0..250).map(|i| counter(&format!("server.noise_{i}"), 1.0)).collect(),
        };
        let mut messages = vec![fan_out(20, 0.0), fan_out(20, 5.0)];
        messages.extend(std::iter::repeat_n(flood, 5));
        stream_metrics(&mut noisy_metrics, messages).await
    };
    let (quiet_result, noisy_result) = tokio::join!(quiet_reports, noisy_reports);
    quiet_result.unwrap();
    noisy_result.unwrap();

    // The noisy tenant sees what was dropped, by reason, through its own API.
    // (Drops are stored each second, so the figures may arrive in parts.)
    let status = status_when(&noisy_api, |s| {
        dropped_for(s, "series_budget") >= 15
            && dropped_for(s, "rate_limited") >= 5 * 250
            && dropped_for(s, "log_budget") >= 2
    })
    .await;
    assert_eq!(dropped_for(&status, "series_budget"), 15, "20 new series, 5 fit: {status}");
    assert_eq!(dropped_for(&status, "log_budget"), 2, "5 entries, 3 fit: {status}");
    let rate_limited = dropped_for(&status, "rate_limited");
    assert_eq!(rate_limited, 5 * 250, "whole flood messages refused: {status}");
    assert_eq!(status["droppedTotal"].as_u64().unwrap(), 17 + rate_limited, "{status}");
    // What was kept of it: exactly the five series that fit, each with its 5 requests.
    let kept = f.edges_when("globex", |e| e.len() == 5).await;
    assert!(kept.iter().all(|e| e.counts.requests == 5), "{kept:?}");
    // The same figures in its Prometheus exposition.
    let (status_code, text) = {
        let r = noisy_api
            .req(reqwest::Method::GET, "/meshes/shop/metrics/prometheus?window=600")
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    };
    assert_eq!(status_code, 200, "{text}");
    assert!(
        text.contains("trellis_telemetry_dropped_total{mesh=\"shop\",reason=\"series_budget\"} 15\n"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "trellis_telemetry_dropped_total{{mesh=\"shop\",reason=\"rate_limited\"}} {rate_limited}\n"
        )),
        "{text}"
    );

    // The quiet tenant's figures are exactly what it sent, and nothing is dropped in its name.
    let edges = f.edges_when("acme", |e| e.iter().map(|e| e.counts.requests).sum::<u64>() >= 33).await;
    assert_eq!(edges.len(), 1, "{edges:?}");
    assert_eq!((edges[0].counts.requests, edges[0].counts.successes), (33, 30));
    let (status_code, body) = f.api.get("/meshes/shop/telemetry/status?window=600").await;
    assert_eq!(status_code, 200, "{body}");
    assert_eq!((body["droppedTotal"].as_u64(), &body["dropped"]), (Some(0), &json!([])), "{body}");
    let r =
        f.api.req(reqwest::Method::GET, "/meshes/shop/metrics/prometheus?window=600").send().await.unwrap();
    let text = r.text().await.unwrap();
    assert!(!text.lines().any(|l| l.starts_with("trellis_telemetry_dropped_total{")), "{text}");
    // The platform metric counts the noisy tenant's drops too.
    assert!(f.dropped("series_budget").await >= 15.0);

    // One tenant cannot read another's status, whatever its role there.
    let stranger = Api { org: "globex".into(), ..f.api.clone() };
    let (status_code, body) = stranger.get("/meshes/shop/telemetry/status").await;
    assert_eq!(status_code, 404, "{body}");
    // A viewer of its own organization can.
    let viewer = Api::new(&f.t, "globex", &token(&f.db, "globex", Role::Viewer).await);
    let (status_code, body) = viewer.get("/meshes/shop/telemetry/status").await;
    assert_eq!(status_code, 200, "{body}");
    let (status_code, body) = viewer.get("/meshes/shop/telemetry/status?window=5").await;
    assert_eq!(status_code, 400, "{body}");
}

/// Envoy's cluster gauges for one upstream cluster, as its `metrics_service` sink sends them
/// (full stat names, gauges): `total` endpoints, `healthy` of them, `ejected` by outlier
/// detection.
fn cluster_gauges(cluster: &str, total: u32, healthy: u32, ejected: u32) -> Vec<MetricFamily> {
    let gauge = |stat: &str, value: u32| MetricFamily {
        name: Some(format!("cluster.{cluster}.{stat}")),
        r#type: Some(MetricType::Gauge as i32),
        metric: vec![Metric {
            gauge: Some(Gauge { value: Some(f64::from(value)) }),
            timestamp_ms: Some(Utc::now().timestamp_millis()),
            ..Default::default()
        }],
        ..Default::default()
    };
    vec![
        gauge("membership_total", total),
        gauge("membership_healthy", healthy),
        gauge("membership_degraded", 0),
        gauge("membership_excluded", 0),
        gauge("outlier_detection.ejections_active", ejected),
        gauge("upstream_cx_active", 2),
    ]
}

/// One flush naming `node` (as Envoy's first message does) with these families.
fn flush_of(node: &str, envoy_metrics: Vec<MetricFamily>) -> StreamMetricsMessage {
    StreamMetricsMessage {
        identifier: Some(Identifier { node: Some(Node { id: node.into(), ..Default::default() }) }),
        envoy_metrics,
    }
}

/// An ADS stream of the proxy `node` holding `svid`, open (its dataplane online) while the
/// returned sender lives.
async fn ads_online(f: &Fixture, svid: &Svid, node: &str) -> tokio::sync::mpsc::Sender<DiscoveryRequest> {
    let mut client =
        AggregatedDiscoveryServiceClient::new(channel(&f.t.xds, &f.root, Some(svid)).await.unwrap());
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(DiscoveryRequest {
        node: Some(Node { id: node.into(), user_agent_name: "envoy".into(), ..Default::default() }),
        type_url: "type.googleapis.com/envoy.config.cluster.v3.Cluster".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut responses =
        client.stream_aggregated_resources(ReceiverStream::new(rx)).await.unwrap().into_inner();
    tokio::spawn(async move { while let Ok(Some(_)) = responses.message().await {} });
    tx
}

/// Polls `service`'s health until `done`.
async fn health_when(
    api: &Api,
    service: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let mut body = serde_json::Value::Null;
    for _ in 0..100 {
        let (status, b) = api.get(&format!("/meshes/shop/services/{service}/health")).await;
        assert_eq!(status, 200, "{b}");
        body = b;
        if done(&body) {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the health never came to what was expected: {body:#}");
}

#[tokio::test]
async fn envoys_cluster_gauges_show_which_callers_see_a_services_endpoints_ejected_or_unhealthy() {
    let f = fixture(&[]).await;
    let svid = f.svid("acme", "productpage").await;
    let ads = ads_online(&f, &svid, "productpage-1").await;
    health_when(&f.api, "productpage", |h| h["dataplanes"]["online"] == 1).await;
    let quiet = health_when(&f.api, "reviews", |_| true).await;
    assert_eq!(quiet["endpoints"]["reports"], json!([]), "no report yet: {quiet:#}");
    assert_eq!(quiet["endpoints"]["maxReportAgeSeconds"], 60);

    // productpage's Envoy sees three reviews endpoints: one ejected, one failing its health
    // checks; in the v2 subset, one healthy. Gauges of another mesh's cluster are ignored.
    let mut client = f.metrics(Some(&svid)).await;
    let seen = [
        cluster_gauges("reviews.shop:9080", 3, 1, 1),
        cluster_gauges("reviews.shop:9080~version=v2", 1, 1, 0),
        cluster_gauges("reviews.othermesh:9080", 4, 0, 4),
        cluster_gauges("inbound:9080", 1, 1, 0),
    ]
    .concat();
    stream_metrics(&mut client, vec![flush_of("productpage-1", seen)]).await.unwrap();
    let h = health_when(&f.api, "reviews", |h| h["endpoints"]["ejected"] == 1).await;
    let e = &h["endpoints"];
    assert_eq!((&e["unhealthy"], &e["impairedCallers"]), (&json!(2), &json!(1)), "{e:#}");
    let reports = e["reports"].as_array().unwrap();
    assert_eq!(reports.len(), 2, "{e:#}");
    let worst = &reports[0];
    assert_eq!(
        (&worst["caller"], &worst["node"], &worst["port"], &worst["subset"]),
        (&json!("productpage"), &json!("productpage-1"), &json!(9080), &json!({}))
    );
    assert_eq!(
        (&worst["total"], &worst["healthy"], &worst["ejected"], &worst["unhealthy"]),
        (&json!(3), &json!(1), &json!(1), &json!(2))
    );
    assert_eq!(reports[1]["subset"], json!({"version": "v2"}));
    assert_eq!(reports[1]["unhealthy"], 0);

    // A gauge is the latest value: the next flush, all three healthy again, replaces it.
    stream_metrics(
        &mut client,
        vec![flush_of("productpage-1", cluster_gauges("reviews.shop:9080", 3, 3, 0))],
    )
    .await
    .unwrap();
    let h = health_when(&f.api, "reviews", |h| h["endpoints"]["unhealthy"] == 0).await;
    assert_eq!((&h["endpoints"]["ejected"], &h["endpoints"]["impairedCallers"]), (&json!(0), &json!(0)));
    assert_eq!(h["endpoints"]["reports"][0]["total"], 3);

    // A proxy with no xDS stream (no dataplane online) is not shown, whatever it reports.
    stream_metrics(&mut client, vec![flush_of("ghost-1", cluster_gauges("reviews.shop:9080", 3, 0, 3))])
        .await
        .unwrap();
    // Another tenant's proxy, in a mesh of the same name, claiming acme's node: its own
    // tenant's rows only.
    let other = second_org(&f).await;
    let theirs = f.svid("globex", "productpage").await;
    let _their_ads = ads_online(&f, &theirs, "productpage-1").await;
    stream_metrics(
        &mut f.metrics(Some(&theirs)).await,
        vec![flush_of("productpage-1", cluster_gauges("reviews.shop:9080", 2, 0, 2))],
    )
    .await
    .unwrap();
    let theirs_seen = health_when(&other, "reviews", |h| h["endpoints"]["ejected"] == 2).await;
    assert_eq!(theirs_seen["endpoints"]["reports"].as_array().unwrap().len(), 1);
    let h = health_when(&f.api, "reviews", |_| true).await;
    assert_eq!((&h["endpoints"]["ejected"], &h["endpoints"]["unhealthy"]), (&json!(0), &json!(0)), "{h:#}");
    let mut admin = f.db.admin_conn().await;
    let rows: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT o.slug::text, e.node_id, e.destination_service FROM endpoint_health e \
         JOIN organizations o ON o.id = e.org_id ORDER BY 1, 2, 3",
    )
    .fetch_all(&mut admin)
    .await
    .unwrap();
    let rows: Vec<(&str, &str)> = rows.iter().map(|(o, n, _)| (o.as_str(), n.as_str())).collect();
    assert_eq!(
        rows,
        [
            ("acme", "ghost-1"),
            ("acme", "productpage-1"),
            ("acme", "productpage-1"),
            ("globex", "productpage-1")
        ],
        "each proxy's clusters of its own mesh under its own tenant, nothing of othermesh or inbound"
    );

    // A report older than the bound (60 s) is not shown; the next flush shows again.
    sqlx::query("UPDATE endpoint_health SET reported_at = now() - interval '61 seconds'")
        .execute(&mut admin)
        .await
        .unwrap();
    let aged = health_when(&f.api, "reviews", |_| true).await;
    assert_eq!(aged["endpoints"]["reports"], json!([]), "{aged:#}");
    // The leader deletes reports past retention (an hour), in every tenant.
    sqlx::query(
        "UPDATE endpoint_health SET reported_at = now() - interval '2 hours' WHERE node_id = 'ghost-1'",
    )
    .execute(&mut admin)
    .await
    .unwrap();
    assert_eq!(f.store.expire_endpoint_health(trellis_store::ENDPOINT_HEALTH_RETENTION).await.unwrap(), 1);
    stream_metrics(
        &mut client,
        vec![flush_of("productpage-1", cluster_gauges("reviews.shop:9080", 3, 2, 1))],
    )
    .await
    .unwrap();
    health_when(&f.api, "reviews", |h| h["endpoints"]["ejected"] == 1).await;

    // The caller's proxy goes offline: its report is no longer shown.
    drop(ads);
    let h = health_when(&f.api, "reviews", |h| h["endpoints"]["reports"] == json!([])).await;
    assert_eq!(h["endpoints"]["ejected"], 0);
}
