//! SDS for Envoy sidecars: the two secrets every sidecar asks for over ADS, and the TLS
//! contexts that name them (XDS.md §6).
//!
//! - `trust-bundle`: the mesh's root certificates, inline, the one that signs now first (the
//!   contract's bundle order). The control plane holds them, so a root rotation reaches every
//!   sidecar with the next push, and tells agents to renew.
//! - `workload`: the sidecar's own certificate and key, as file names under the agent's
//!   certificate directory. The agent writes and renews those files; Envoy reloads them when
//!   the directory changes. The control plane never holds a workload's private key.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
use envoy_types::pb::envoy::config::core::v3::{DataSource, TransportSocket, WatchedDirectory};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::common_tls_context::{
    CombinedCertificateValidationContext, ValidationContextType,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::secret::Type as SecretType;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, SdsSecretConfig, Secret,
    SubjectAltNameMatcher, TlsCertificate, UpstreamTlsContext,
};
use envoy_types::pb::google::protobuf::BoolValue;

use crate::contract::{CERT_FILE, KEY_FILE};
use crate::util::{ads, exact, tls_socket};

/// The secret holding the sidecar's certificate chain and private key.
pub const WORKLOAD_SECRET: &str = "workload";
/// The secret holding the mesh's trusted roots.
pub const TRUST_BUNDLE_SECRET: &str = "trust-bundle";

/// The SDS secrets of a sidecar, by name: the mesh's `trust_bundle_pem` inline, and the
/// workload certificate as files under `cert_dir` (the agent keeps them fresh).
pub fn sds_secrets(trust_bundle_pem: &str, cert_dir: &str) -> BTreeMap<String, Secret> {
    let dir = if cert_dir == "/" { "/" } else { cert_dir.trim_end_matches('/') };
    let file = |name: &str| DataSource {
        specifier: Some(Specifier::Filename(crate::contract::cert_path(dir, name))),
        ..Default::default()
    };
    let workload = Secret {
        name: WORKLOAD_SECRET.into(),
        r#type: Some(SecretType::TlsCertificate(TlsCertificate {
            certificate_chain: Some(file(CERT_FILE)),
            private_key: Some(file(KEY_FILE)),
            // Envoy rereads both files when a file is moved into the directory: the agent writes
            // new files elsewhere and renames them in, so a chain never pairs with an old key.
            watched_directory: Some(WatchedDirectory { path: dir.to_owned(), ..Default::default() }),
            ..Default::default()
        })),
    };
    let bundle = Secret {
        name: TRUST_BUNDLE_SECRET.into(),
        r#type: Some(SecretType::ValidationContext(CertificateValidationContext {
            trusted_ca: Some(DataSource {
                specifier: Some(Specifier::InlineString(trust_bundle_pem.to_owned())),
                ..Default::default()
            }),
            ..Default::default()
        })),
    };
    [workload, bundle].into_iter().map(|s| (s.name.clone(), s)).collect()
}

fn sds(name: &str) -> SdsSecretConfig {
    SdsSecretConfig { name: name.into(), sds_config: Some(ads()) }
}

/// Inbound mTLS: our workload certificate, and a client certificate required and checked
/// against the mesh's roots. Who may call is the RBAC filters' business.
pub(crate) fn downstream_tls() -> TransportSocket {
    tls_socket(DownstreamTlsContext {
        require_client_certificate: Some(BoolValue { value: true }),
        common_tls_context: Some(CommonTlsContext {
            tls_certificate_sds_secret_configs: vec![sds(WORKLOAD_SECRET)],
            validation_context_type: Some(ValidationContextType::ValidationContextSdsSecretConfig(sds(
                TRUST_BUNDLE_SECRET,
            ))),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// Outbound mTLS to a service: our workload certificate, the mesh's roots from SDS, and the
/// peer pinned to `peer_id` (a URI SAN, type 3), which Envoy merges with the SDS roots.
pub(crate) fn upstream_tls(peer_id: &str) -> TransportSocket {
    tls_socket(UpstreamTlsContext {
        common_tls_context: Some(CommonTlsContext {
            tls_certificate_sds_secret_configs: vec![sds(WORKLOAD_SECRET)],
            validation_context_type: Some(ValidationContextType::CombinedValidationContext(
                CombinedCertificateValidationContext {
                    default_validation_context: Some(CertificateValidationContext {
                        match_typed_subject_alt_names: vec![SubjectAltNameMatcher {
                            san_type: 3,
                            matcher: Some(exact(peer_id)),
                            ..Default::default()
                        }],
                        ..Default::default()
                    }),
                    validation_context_sds_secret_config: Some(sds(TRUST_BUNDLE_SECRET)),
                    ..Default::default()
                },
            )),
            ..Default::default()
        }),
        ..Default::default()
    })
}
