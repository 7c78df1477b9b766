//! The proxy wire contract: what the bootstraps Trellis serves write and what the xDS server
//! and the agent read back, in one place, so that they cannot drift apart. Plain names and
//! rules, no Envoy types: the REST API takes it from here (it may not use `xds`), and `xds`
//! re-exports it as `trellis_xds::contract`. (Resource names still live in `xds`'s `names.rs`.)
//!
//! **Trust bundle order.** Wherever a mesh's trust bundle is served as PEM (the SDS
//! `trust-bundle` secret, an issuance's `trust_bundle_pem`, so `bundle.pem`), the root of the
//! CA that signs now comes first, then the others oldest first (`store`'s `bundle_roots`).
//! Peers trust every root alike (Envoy too); a workload whose SVID does not chain to the first
//! root renews it at once: that is how agents follow an activation.

/// The certificate-provider instance name the generated gRPC bootstrap defines and the
/// translation's TLS contexts refer to.
pub const CERT_PROVIDER: &str = "trellis";
/// The workload's certificate and key, under the certificate directory.
pub const CERT_FILE: &str = "cert.pem";
pub const KEY_FILE: &str = "key.pem";

/// Where a workload keeps its certificate files unless its bootstrap says otherwise.
pub const DEFAULT_CERT_DIR: &str = "/var/run/trellis";
/// Longest accepted certificate directory.
pub const MAX_CERT_DIR: usize = 256;
/// The platform root that verifies the xDS server, under the certificate directory.
pub const PLATFORM_CA_FILE: &str = "ca.pem";
/// The mesh trust bundle that verifies peers, under the certificate directory.
pub const BUNDLE_FILE: &str = "bundle.pem";

/// What `trellis inject`'s pods read from their namespace, and what the console tells a
/// person to create there: one definition, so that the commands shown match the sidecar.
pub mod kubernetes {
    /// The ConfigMap holding the platform root, unless `--platform-ca-configmap` says otherwise.
    pub const PLATFORM_CA_CONFIGMAP: &str = "trellis-platform-ca";
    /// The platform root's key in that ConfigMap.
    pub const PLATFORM_CA_KEY: &str = "ca.pem";
    /// The join token's key in its Secret.
    pub const TOKEN_KEY: &str = "token";

    /// The Secret holding the join token of `service`'s pods, unless `--token-secret` says
    /// otherwise: one per service, since a join token is bound to one.
    pub fn token_secret(service: &str) -> String {
        format!("trellis-join-{service}")
    }
}

/// Keys of a node's metadata (`node.metadata` in a bootstrap).
pub mod node_metadata {
    /// The mesh the node belongs to (informational: the certificate decides).
    pub const MESH: &str = "mesh";
    /// The node's certificate directory; SDS `workload` points at the files in it.
    pub const CERT_DIR: &str = "certDir";
    /// The service ports the node serves (a list of numbers): its inbound listeners.
    pub const PORTS: &str = "ports";
    /// The instance's tags (a map of strings), e.g. `{"version": "v2"}`.
    pub const TAGS: &str = "tags";
    /// The address the node serves its inbound ports on, advertised as its endpoint
    /// (defaults to the stream's remote address).
    pub const ADDRESS: &str = "address";
}

/// The Envoy bootstrap's cluster for the control plane's TLS port: ADS, and where the proxy
/// streams its stats and access logs.
pub const XDS_CLUSTER: &str = "xds";

/// The `log_name` of a sidecar's gRPC access loggers: which side of the proxy logged an
/// entry (the control plane reads it from the stream's first message).
pub mod access_log_name {
    /// Calls the proxy's own service received.
    pub const INBOUND: &str = "trellis-inbound";
    /// Calls the proxy's service made.
    pub const OUTBOUND: &str = "trellis-outbound";
}

/// How a proxy names the access rule that decided a call. The RBAC policies Trellis generates
/// are named after the AccessPolicy resource and the rule's index, `<resource>/rules/<i>`;
/// a denial carries the policy's name in Envoy's response details,
/// `rbac_access_denied_matched_policy[<name>]`, `none` when no allow rule matched; an audit
/// rule that matched is Envoy's shadow policy, in the RBAC filter's dynamic metadata under
/// the audit filter's stat prefix. The agent writes all three as Envoy does.
pub mod rbac {
    /// The name Envoy gives a denial no policy matched (an allow filter's default deny).
    pub const NO_POLICY: &str = "none";
    /// The stat (and metadata key) prefix of the audit rules' shadow RBAC filter.
    pub const AUDIT_STAT_PREFIX: &str = "trellis_audit_";
    /// The dynamic-metadata key of the shadow policy that matched, without the prefix.
    pub const SHADOW_POLICY_KEY: &str = "shadow_effective_policy_id";
    /// The dynamic-metadata key of the shadow rules' verdict (`denied` when an audit rule
    /// matched), without the prefix.
    pub const SHADOW_RESULT_KEY: &str = "shadow_engine_result";
    /// The dynamic-metadata namespaces Envoy's RBAC filters write (HTTP, network).
    pub const METADATA_NAMESPACES: [&str; 2] = ["envoy.filters.http.rbac", "envoy.filters.network.rbac"];
    const DENIED_PREFIX: &str = "rbac_access_denied_matched_policy[";

    /// The RBAC policy of rule `rule` of the AccessPolicy `resource`.
    pub fn policy_name(resource: &str, rule: usize) -> String {
        format!("{resource}/rules/{rule}")
    }

    /// The AccessPolicy and rule index a policy name stands for; None for any other name.
    pub fn parse_policy_name(name: &str) -> Option<(&str, usize)> {
        let (resource, rule) = name.rsplit_once("/rules/")?;
        let rule = rule.parse().ok().filter(|_| !rule.starts_with('+'))?;
        (!resource.is_empty() && !resource.contains('/')).then_some((resource, rule))
    }

    /// Envoy's response details for a denial by `policy` (None: no policy matched).
    pub fn denied_details(policy: Option<&str>) -> String {
        format!("{DENIED_PREFIX}{}]", policy.unwrap_or(NO_POLICY))
    }

    /// Whether response details say an RBAC filter denied.
    pub fn is_denial(details: &str) -> bool {
        details.starts_with("rbac_access_denied")
    }

    /// The policy a denial names; None when the details name none (or are no denial).
    pub fn policy_of_details(details: &str) -> Option<&str> {
        let name = details.strip_prefix(DENIED_PREFIX)?.strip_suffix(']')?;
        (name != NO_POLICY && !name.is_empty()).then_some(name)
    }
}

/// The gauges of an upstream cluster that tell how many of its endpoints a proxy can use, in
/// Envoy's stat names (`cluster.<cluster name>.<gauge>`): Envoy reports them through its
/// `metrics_service` sink by configuration alone, the agent reports the same names, and the
/// control plane reads them back into service health.
pub mod cluster_gauge {
    /// Endpoints ejected by outlier detection now.
    pub const EJECTIONS_ACTIVE: &str = "outlier_detection.ejections_active";
    /// Endpoints the proxy knows of.
    pub const MEMBERSHIP_TOTAL: &str = "membership_total";
    /// Endpoints usable: neither failing active health checks nor ejected.
    pub const MEMBERSHIP_HEALTHY: &str = "membership_healthy";
    /// Endpoints degraded (used only when too few are healthy).
    pub const MEMBERSHIP_DEGRADED: &str = "membership_degraded";
}

/// Envoy's runtime key for the largest RE2 program a regex may compile to; the Envoy
/// bootstrap sets it to [`crate::config::MAX_RE2_PROGRAM`], the bound the API checks.
pub const RE2_MAX_PROGRAM_SIZE_KEY: &str = "re2.max_program_size.error_level";

/// A certificate directory, normalized (no trailing `/`): an absolute path of at most
/// [`MAX_CERT_DIR`] bytes, without `.` or `..` segments or control characters.
pub fn parse_cert_dir(dir: &str) -> Result<String, String> {
    let ok = dir.starts_with('/')
        && dir.len() <= MAX_CERT_DIR
        && !dir.chars().any(char::is_control)
        && !dir.split('/').any(|seg| seg == ".." || seg == ".");
    if !ok {
        return Err(format!(
            "must be an absolute path of at most {MAX_CERT_DIR} characters, without `..`, `.` or control characters"
        ));
    }
    let trimmed = dir.trim_end_matches('/');
    Ok(if trimmed.is_empty() { "/".to_owned() } else { trimmed.to_owned() })
}

/// `<dir>/<file>`.
pub fn cert_path(dir: &str, file: &str) -> String {
    if dir == "/" { format!("/{file}") } else { format!("{}/{file}", dir.trim_end_matches('/')) }
}
