//! The bootstraps Trellis serves a workload — the gRPC xDS bootstrap and the Envoy
//! bootstrap — as the rest of the wire contract (`contract`) says they must read: the same
//! file names, certificate provider, node metadata and xDS cluster that the xDS server and the
//! agent read back. JSON values, no Envoy types, so that the REST API can serve them.
//!
//! The files a workload keeps in its certificate directory: `ca.pem` (the platform root: it
//! verifies the xDS server), `cert.pem` and `key.pem` (its SVID: its identity towards the xDS
//! server and its peers), `bundle.pem` (the mesh trust bundle: it verifies peers). The xDS
//! server is never verified with the mesh bundle, nor peers with the platform root.

use serde_json::{Value, json};

use crate::Tags;
use crate::config::MAX_RE2_PROGRAM;
use crate::contract::{
    BUNDLE_FILE, CERT_FILE, CERT_PROVIDER, KEY_FILE, PLATFORM_CA_FILE, cert_path, node_metadata,
};

/// The workload a bootstrap is for, checked by whoever serves it.
#[derive(Debug, Clone)]
pub struct Workload {
    pub mesh: String,
    pub service: String,
    pub node: String,
    pub cert_dir: String,
    /// Inbound service ports (sidecars only), ascending.
    pub ports: Vec<u32>,
    pub tags: Tags,
}

impl Workload {
    fn file(&self, name: &str) -> String {
        cert_path(&self.cert_dir, name)
    }

    /// The node's metadata, as the xDS server reads it back.
    fn sidecar_metadata(&self) -> Value {
        json!({
            (node_metadata::MESH): self.mesh,
            (node_metadata::CERT_DIR): self.cert_dir,
            (node_metadata::PORTS): self.ports,
            (node_metadata::TAGS): self.tags,
        })
    }

    /// The gRPC xDS bootstrap (gRFC A27/A65): mTLS to the xDS server, and the `trellis`
    /// certificate provider that xDS security (A29) names for mesh traffic.
    pub fn grpc(&self, xds_address: &str) -> Value {
        let t = self;
        json!({
            "xds_servers": [{
                "server_uri": xds_address,
                "channel_creds": [{
                    "type": "tls",
                    "config": {
                        "ca_certificate_file": t.file(PLATFORM_CA_FILE),
                        "certificate_file": t.file(CERT_FILE),
                        "private_key_file": t.file(KEY_FILE),
                        "refresh_interval": "600s",
                    },
                }],
                "server_features": ["xds_v3"],
            }],
            // gRPC for Node.js refuses a bootstrap whose node has no `locality`; operators put
            // the workload's `zone` in it (it becomes the dataplane's zone).
            "node": { "id": t.node, "cluster": t.service, "locality": {}, "metadata": { "mesh": t.mesh } },
            "certificate_providers": {
                (CERT_PROVIDER): {
                    "plugin_name": "file_watcher",
                    "config": {
                        "certificate_file": t.file(CERT_FILE),
                        "private_key_file": t.file(KEY_FILE),
                        "ca_certificate_file": t.file(BUNDLE_FILE),
                        "refresh_interval": "60s",
                    },
                },
            },
            "server_listener_resource_name_template": "grpc/server?xds.resource.listening_address=%s",
        })
    }

    /// The Envoy bootstrap: ADS over a static `xds` cluster (HTTP/2 with keepalive, TLS pinned
    /// to the platform root and the server's name, the SVID as client certificate); listeners,
    /// clusters and the mesh's secrets (SDS) come over ADS.
    pub fn envoy(&self, xds_address: &str) -> Value {
        let t = self;
        let (host, port) = split_host_port(xds_address);
        let ip = host.parse::<std::net::IpAddr>().is_ok();
        let mut tls = json!({
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "common_tls_context": {
                "tls_certificates": [{
                    "certificate_chain": { "filename": t.file(CERT_FILE) },
                    "private_key": { "filename": t.file(KEY_FILE) },
                }],
                "validation_context": {
                    "trusted_ca": { "filename": t.file(PLATFORM_CA_FILE) },
                    "match_typed_subject_alt_names": [{
                        "san_type": if ip { "IP_ADDRESS" } else { "DNS" },
                        "matcher": { "exact": host },
                    }],
                },
            },
        });
        if !ip {
            tls["sni"] = json!(host);
        }
        json!({
            "node": { "id": t.node, "cluster": t.service, "metadata": t.sidecar_metadata() },
            // Envoy refuses a regex whose RE2 program is larger than this runtime value (100
            // unless set); the API bounds every regex by the same number.
            "layered_runtime": { "layers": [
                { "name": "trellis", "static_layer": {
                    (crate::contract::RE2_MAX_PROGRAM_SIZE_KEY): MAX_RE2_PROGRAM,
                } },
                { "name": "admin", "admin_layer": {} },
            ] },
            // Stats go to the control plane every 10 s (its bucket width) under their full names
            // (the default tag extractors cut a cluster name at its first dot), and request
            // latency is bucketed with the control plane's bounds, so that it is stored exactly.
            // No stats matcher: every stat reaches the sink, the cluster gauges of service
            // health (`contract::cluster_gauge`) among them.
            "stats_sinks": [{
                "name": "envoy.stat_sinks.metrics_service",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.config.metrics.v3.MetricsServiceConfig",
                    "transport_api_version": "V3",
                    "grpc_service": { "envoy_grpc": { "cluster_name": crate::contract::XDS_CLUSTER } },
                },
            }],
            "stats_flush_interval": "10s",
            "stats_config": {
                "histogram_bucket_settings": [{
                    "match": { "suffix": ".upstream_rq_time" },
                    "buckets": crate::telemetry::bucket_upper_bounds_ms(),
                }],
            },
            "dynamic_resources": {
                "ads_config": {
                    "api_type": "GRPC",
                    "transport_api_version": "V3",
                    "grpc_services": [{ "envoy_grpc": { "cluster_name": crate::contract::XDS_CLUSTER } }],
                    "set_node_on_first_message_only": true,
                },
                "lds_config": { "ads": {}, "resource_api_version": "V3" },
                "cds_config": { "ads": {}, "resource_api_version": "V3" },
            },
            "static_resources": {
                "clusters": [{
                    "name": crate::contract::XDS_CLUSTER,
                    "type": if ip { "STATIC" } else { "STRICT_DNS" },
                    "connect_timeout": "5s",
                    "typed_extension_protocol_options": {
                        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                            "explicit_http_config": {
                                "http2_protocol_options": {
                                    "connection_keepalive": { "interval": "30s", "timeout": "5s" },
                                },
                            },
                        },
                    },
                    "upstream_connection_options": { "tcp_keepalive": {} },
                    "load_assignment": {
                        "cluster_name": crate::contract::XDS_CLUSTER,
                        "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address": {
                            "socket_address": { "address": host, "port_value": port },
                        } } }] }],
                    },
                    "transport_socket": { "name": "envoy.transport_sockets.tls", "typed_config": tls },
                }],
            },
            "admin": { "address": { "socket_address": { "address": "127.0.0.1", "port_value": 9901 } } },
        })
    }
}

/// `host:port` or `[v6]:port` → (host, port).
fn split_host_port(addr: &str) -> (String, u16) {
    let (host, port) = addr.rsplit_once(':').unwrap_or((addr, "443"));
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (host.to_owned(), port.parse().unwrap_or(443))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_envoy_bootstrap_carries_what_the_translation_reads_and_raises_the_regex_limit() {
        let t = Workload {
            mesh: "m1".into(),
            service: "reviews".into(),
            node: "n1".into(),
            cert_dir: "/etc/x".into(),
            ports: vec![9080],
            tags: Tags::parse([("version", "v2")]).unwrap(),
        };
        let e = t.envoy("xds.example:18000");
        assert_eq!(
            e["node"]["metadata"],
            json!({"mesh": "m1", "certDir": "/etc/x", "ports": [9080], "tags": {"version": "v2"}})
        );
        let layer = &e["layered_runtime"]["layers"][0]["static_layer"];
        assert_eq!(layer["re2.max_program_size.error_level"], json!(MAX_RE2_PROGRAM));
        // Stats reach the control plane through the xDS cluster, latency in its own buckets.
        let sink = &e["stats_sinks"][0];
        assert_eq!(sink["name"], "envoy.stat_sinks.metrics_service");
        assert_eq!(sink["typed_config"]["transport_api_version"], "V3");
        assert_eq!(sink["typed_config"]["grpc_service"]["envoy_grpc"]["cluster_name"], "xds");
        assert_eq!(e["static_resources"]["clusters"][0]["name"], "xds");
        let buckets = &e["stats_config"]["histogram_bucket_settings"][0];
        assert_eq!(buckets["match"]["suffix"], ".upstream_rq_time");
        assert_eq!(buckets["buckets"], json!(crate::telemetry::bucket_upper_bounds_ms()));
        // Nothing filters the stats: the membership and ejection gauges are sent too.
        assert!(e["stats_config"].get("stats_matcher").is_none(), "{e:#}");
        assert_eq!(e["stats_config"].as_object().unwrap().len(), 1, "only the histogram buckets");
    }

    #[test]
    fn the_grpc_bootstrap_pins_the_platform_root_and_names_the_provider() {
        let t = Workload {
            mesh: "m1".into(),
            service: "echo".into(),
            node: "n1".into(),
            cert_dir: "/d".into(),
            ports: vec![],
            tags: Tags::new(),
        };
        let b = t.grpc("xds.example:18000");
        assert_eq!(b["xds_servers"][0]["channel_creds"][0]["config"]["ca_certificate_file"], "/d/ca.pem");
        assert_eq!(b["certificate_providers"]["trellis"]["config"]["ca_certificate_file"], "/d/bundle.pem");
        assert_eq!(b["node"]["cluster"], "echo");
        assert!(b["node"]["locality"].is_object(), "gRPC for Node.js requires node.locality: {b}");
        let e = t.envoy("[::1]:18000");
        let cluster = &e["static_resources"]["clusters"][0];
        assert_eq!(cluster["type"], "STATIC");
        assert_eq!(
            cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
                ["address"],
            "::1"
        );
        assert!(cluster["transport_socket"]["typed_config"].get("sni").is_none());
    }
}
