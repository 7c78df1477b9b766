//! Configuration specs: the example round-trips, and bad input names the exact field.

use serde_json::{Value, json};
use trellis_model::config::{Kind, Spec, effective, parse_mesh_spec};

fn example() -> Vec<Value> {
    let text = include_str!("../../examples/reviews.yaml");
    serde_yaml::Deserializer::from_str(text)
        .map(|d| serde_yaml::with::singleton_map_recursive::deserialize(d).unwrap())
        .collect()
}

fn errors(kind: Kind, spec: Value) -> Vec<(String, String)> {
    match Spec::parse(kind, "spec", spec) {
        Ok(_) => vec![],
        Err(e) => e.into_iter().map(|e| (e.field, e.message)).collect(),
    }
}

fn assert_error(kind: Kind, spec: Value, field: &str, needle: &str) {
    let errs = errors(kind, spec.clone());
    assert!(
        errs.iter().any(|(f, m)| f == field && m.contains(needle)),
        "expected {field}: …{needle}… for {spec}, got {errs:?}"
    );
}

#[test]
fn every_example_document_parses_and_round_trips() {
    let docs = example();
    assert_eq!(docs.len(), 10);
    let mut kinds = std::collections::BTreeSet::new();
    for doc in docs {
        let kind = doc["kind"].as_str().unwrap();
        if kind == "Mesh" {
            parse_mesh_spec("spec", doc["spec"].clone()).unwrap();
            continue;
        }
        let k = Kind::lookup(kind).unwrap();
        kinds.insert(k);
        let parsed = Spec::parse(k, "spec", doc["spec"].clone()).unwrap_or_else(|e| panic!("{kind}: {e:?}"));
        // Canonical JSON parses back to the same spec.
        let again = Spec::parse(k, "spec", parsed.spec.to_json()).unwrap();
        assert_eq!(again.spec, parsed.spec);
    }
    assert_eq!(kinds.len(), Kind::ALL.len(), "the example covers every kind");
}

#[test]
fn the_canary_and_the_beta_channel_are_expressed() {
    let route = example().into_iter().find(|d| d["kind"] == "HTTPRoute").unwrap();
    let Spec::HttpRoute(r) = Spec::parse(Kind::HttpRoute, "spec", route["spec"].clone()).unwrap().spec else {
        panic!()
    };
    let beta = &r.rules[0];
    assert_eq!(beta.matches[0].headers[0].name, "x-beta");
    assert_eq!(beta.backend_refs.len(), 1);
    assert_eq!(beta.backend_refs[0].tags["version"], "v2");
    let split: Vec<(String, u32)> =
        r.rules[1].backend_refs.iter().map(|b| (b.tags["version"].clone(), b.weight)).collect();
    assert_eq!(split, [("v1".to_owned(), 75), ("v2".to_owned(), 25)]);
}

#[test]
fn bad_input_names_the_field() {
    let route = |backends: Value| json!({ "targetRef": {"service": "reviews"}, "rules": [{ "backendRefs": [{"service": "a"}] }, { "backendRefs": backends }] });
    assert_error(
        Kind::HttpRoute,
        route(json!([{"service": "a"}, {"service": "b", "weight": 2000000}])),
        "spec.rules[1].backendRefs[1].weight",
        "between 0 and 1000000",
    );
    assert_error(
        Kind::HttpRoute,
        route(json!([{"service": "a"}, {"service": "b", "weight": "heavy"}])),
        "spec.rules[1].backendRefs[1].weight",
        "invalid type",
    );
    assert_error(
        Kind::HttpRoute,
        route(json!([{"service": "a", "weight": 0}, {"service": "b", "weight": 0}])),
        "spec.rules[1].backendRefs",
        "sum to 0",
    );
    assert_error(Kind::HttpRoute, route(json!([])), "spec.rules[1].backendRefs", "at least 1");
    assert_error(
        Kind::HttpRoute,
        route(json!([{"service": "Bad_Name"}])),
        "spec.rules[1].backendRefs[0].service",
        "lowercase",
    );
    assert_error(
        Kind::HttpRoute,
        route(json!([{"service": "a", "colour": "red"}])),
        "spec.rules[1].backendRefs[0].colour",
        "unknown field `colour`",
    );
    assert_error(
        Kind::HttpRoute,
        json!({"targetRef": {"service": "r"}, "rules": [{"matches": [{"path": {"type": "RegularExpression", "value": "(a"}}], "backendRefs": [{"service": "a"}]}]}),
        "spec.rules[0].matches[0].path.value",
        "invalid regular expression",
    );
    assert_error(
        Kind::HttpRoute,
        json!({"targetRef": {"service": "r"}, "rules": [{"matches": [{"path": {"type": "RegularExpression", "value": "a{1000}{1000}"}}], "backendRefs": [{"service": "a"}]}]}),
        "spec.rules[0].matches[0].path.value",
        "",
    );
    assert_error(
        Kind::HttpRoute,
        json!({"targetRef": {"service": "r"}, "rules": [{"matches": [{"path": {"type": "RegularExpression", "value": "a".repeat(300)}}], "backendRefs": [{"service": "a"}]}]}),
        "spec.rules[0].matches[0].path.value",
        "at most 256 bytes",
    );
    assert_error(
        Kind::HttpRoute,
        json!({"targetRef": {"service": "r"}, "rules": [{"backendRefs": [{"service": "a"}], "timeouts": {"request": "10 seconds"}}]}),
        "spec.rules[0].timeouts.request",
        "not a duration",
    );
    assert_error(
        Kind::HttpRoute,
        json!({"targetRef": {"service": "r"}, "rules": [{"backendRefs": [{"service": "a"}], "retry": {"attempts": 50}}]}),
        "spec.rules[0].retry.attempts",
        "between 0 and 10",
    );
    assert_error(
        Kind::HttpRoute,
        json!({"targetRef": {"service": "r"}, "rules": [{"matches": [{"method": "FETCH"}], "backendRefs": [{"service": "a"}]}]}),
        "spec.rules[0].matches[0].method",
        "must be one of",
    );
    let many: Vec<Value> = (0..65).map(|_| json!({"backendRefs": [{"service": "a"}]})).collect();
    assert_error(
        Kind::HttpRoute,
        json!({"targetRef": {"service": "r"}, "rules": many}),
        "spec.rules",
        "at most 64",
    );
    assert_error(
        Kind::Service,
        json!({"ports": [{"port": 80, "protocol": "http"}, {"port": 80, "protocol": "tcp"}]}),
        "spec.ports[1].port",
        "twice",
    );
    assert_error(
        Kind::Service,
        json!({"ports": [{"port": 70000, "protocol": "http"}]}),
        "spec.ports[0].port",
        "between 1 and 65535",
    );
    assert_error(
        Kind::Service,
        json!({"ports": [{"port": 80, "protocol": "quic"}]}),
        "spec.ports[0].protocol",
        "unknown variant",
    );
    assert_error(Kind::Service, json!({}), "spec", "missing field `ports`");
    assert_error(
        Kind::AccessPolicy,
        json!({"targetRef": {"service": "r"}, "rules": [{"action": "Allow", "from": [{"identity": "spiffe://Bad/x"}]}]}),
        "spec.rules[0].from[0].identity",
        "trust domain",
    );
    assert_error(
        Kind::AccessPolicy,
        json!({"targetRef": {"service": "r"}, "rules": [{"action": "Allow", "from": [{"identity": "spiffe://td/x", "service": "a"}]}]}),
        "spec.rules[0].from[0]",
        "exactly one",
    );
    assert_error(
        Kind::HealthCheck,
        json!({"targetRef": {"service": "r"}, "interval": "1s", "timeout": "5s", "unhealthyThreshold": 1, "healthyThreshold": 1, "tcp": {}}),
        "spec.timeout",
        "longer than interval",
    );
    assert_error(
        Kind::CircuitBreaker,
        json!({"targetRef": {"service": "r"}, "outlierDetection": {"maxEjectionPercent": 150}}),
        "spec.outlierDetection.maxEjectionPercent",
        "between 0 and 100",
    );
    assert_error(
        Kind::RateLimit,
        json!({"targetRef": {"service": "r"}, "local": {"requests": 0, "interval": "1s"}}),
        "spec.local.requests",
        "between 1",
    );
    let errs = parse_mesh_spec("spec", json!({"trustDomain": "Not Valid"})).unwrap_err();
    assert_eq!(errs[0].field, "spec.trustDomain");
}

#[test]
fn service_references_carry_their_paths() {
    let route = example().into_iter().find(|d| d["kind"] == "HTTPRoute").unwrap();
    let parsed = Spec::parse(Kind::HttpRoute, "spec", route["spec"].clone()).unwrap();
    let fields: Vec<&str> = parsed.references.iter().map(|r| r.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "spec.targetRef.service",
            "spec.rules[0].backendRefs[0].service",
            "spec.rules[1].backendRefs[0].service",
            "spec.rules[1].backendRefs[1].service"
        ]
    );
}

#[test]
fn kinds_are_found_by_every_spelling() {
    for (s, k) in [
        ("HTTPRoute", Kind::HttpRoute),
        ("httproutes", Kind::HttpRoute),
        ("http-routes", Kind::HttpRoute),
        ("svc", Kind::Service),
        ("services", Kind::Service),
        ("access-policies", Kind::AccessPolicy),
        ("AccessPolicy", Kind::AccessPolicy),
        ("ratelimit", Kind::RateLimit),
    ] {
        assert_eq!(Kind::lookup(s), Some(k), "{s}");
    }
    assert_eq!(Kind::lookup("pods"), None);
}

#[test]
fn effective_lists_what_applies_in_evaluation_order() {
    let docs = example();
    let parsed: Vec<(String, Spec)> = docs
        .iter()
        .filter(|d| d["kind"] != "Mesh")
        .map(|d| {
            let k = Kind::lookup(d["kind"].as_str().unwrap()).unwrap();
            (
                d["metadata"]["name"].as_str().unwrap().to_owned(),
                Spec::parse(k, "spec", d["spec"].clone()).unwrap().spec,
            )
        })
        .collect();
    let eff = effective("reviews", parsed.iter().map(|(n, s)| (n.as_str(), s)));
    let order: Vec<(&str, &str)> = eff.iter().map(|e| (e.kind, e.name.as_str())).collect();
    assert_eq!(
        order,
        [
            ("Service", "reviews"),
            ("AccessPolicy", "reviews-callers"),
            ("HTTPRoute", "reviews"),
            ("CircuitBreaker", "reviews"),
            ("HealthCheck", "reviews"),
            ("RateLimit", "reviews"),
        ]
    );
    assert!(effective("nobody", parsed.iter().map(|(n, s)| (n.as_str(), s))).is_empty());
}

/// RE2's own `ProgramSize()` for these patterns, measured with RE2 (the `google-re2` 1.1.20251105
/// Python binding): the estimate must never be below it, or Envoy could refuse a route the API
/// accepted.
const RE2_MEASURED: &[(&str, usize)] = &[
    ("abc", 7),
    ("^/api/.*", 12),
    ("/api/v[0-9]+/items/.*", 27),
    (r"[\w-]+", 9),
    (r"^/v1/[a-f0-9]{8}-[a-f0-9]{4}-[a-f0-9]{4}-[a-f0-9]{4}-[a-f0-9]{12}$", 72),
    ("(?i)hello", 9),
    ("(?i)k", 8),
    ("[a-z]{1,20}", 43),
    (r"\pL+", 1201),
    (r"\W+", 16),
    ("[^a-z]", 12),
    (".{10}", 84),
    ("x{0,30}", 64),
    ("((a*)*)*", 17),
    ("(?:(^)*){4}", 32),
    ("(?:(?:($)+){1,}){5}", 28),
    (r"^/static/.*\.(css|js|png)$", 23),
    (r"[a-zA-Z0-9._%+-]+@[a-zA-Z0-9.-]+\.[a-zA-Z]{2,}", 20),
    (r"[\x{100}-\x{2000}]", 13),
    ("[a-z0-9]{600}", 1204),
];

#[test]
fn the_re2_program_size_estimate_is_never_below_re2s_own_count() {
    for (re, measured) in RE2_MEASURED {
        let estimate = trellis_model::config::re2_program_size(re).unwrap();
        assert!(estimate >= *measured, "{re}: estimated {estimate}, RE2 counts {measured}");
    }
}

#[test]
fn a_regex_envoy_would_refuse_is_refused_with_its_field_path() {
    let route = |re: &str| json!({"targetRef": {"service": "r"}, "rules": [{"matches": [{"headers": [{"type": "RegularExpression", "name": "x-id", "value": re}]}], "backendRefs": [{"service": "a"}]}]});
    // Unicode letters are a thousand RE2 instructions on their own (RE2 counts 1201).
    assert_error(
        Kind::HttpRoute,
        route(r"\pL+"),
        "spec.rules[0].matches[0].headers[0].value",
        "too complex for Envoy",
    );
    // Small enough for the `regex` crate's own limit, too big for RE2 (1204 instructions).
    assert_error(Kind::HttpRoute, route("[a-z0-9]{600}"), "spec.rules[0].matches[0].headers[0].value", "RE2");
    // A UUID in a path is fine.
    assert!(
        errors(Kind::HttpRoute, route(r"^/v1/[a-f0-9]{8}-[a-f0-9]{4}-[a-f0-9]{4}-[a-f0-9]{4}-[a-f0-9]{12}$"))
            .is_empty()
    );
}

#[test]
fn an_abort_has_an_http_or_a_grpc_status_in_range() {
    let route = |abort: Value| json!({"targetRef": {"service": "r"}, "rules": [{"backendRefs": [{"service": "a"}], "fault": {"abort": abort}}]});
    for ok in [json!({"httpStatus": 503, "percent": 10}), json!({"grpcStatus": 14, "percent": 100})] {
        assert!(errors(Kind::HttpRoute, route(ok.clone())).is_empty(), "{ok}");
    }
    let at = "spec.rules[0].fault.abort";
    for (abort, field, needle) in [
        (json!({"grpcStatus": 0, "percent": 5}), format!("{at}.grpcStatus"), "between 1 and 16, got 0"),
        (json!({"grpcStatus": 17, "percent": 5}), format!("{at}.grpcStatus"), "between 1 and 16, got 17"),
        (json!({"httpStatus": 99, "percent": 5}), format!("{at}.httpStatus"), "between 200 and 599"),
        (json!({"httpStatus": 503, "grpcStatus": 14, "percent": 5}), at.to_owned(), "not both"),
        (json!({"percent": 5}), at.to_owned(), "must have httpStatus or grpcStatus"),
    ] {
        assert_error(Kind::HttpRoute, route(abort), &field, needle);
    }
}

#[test]
fn a_rule_after_a_catch_all_rule_is_refused_as_unreachable() {
    let catch_all = json!({"backendRefs": [{"service": "a"}]});
    let beta = json!({"matches": [{"headers": [{"name": "x-beta", "value": "true"}]}], "backendRefs": [{"service": "b"}]});
    let slash = json!({"matches": [{"path": {"type": "PathPrefix", "value": "/"}}], "backendRefs": [{"service": "a"}]});
    assert_error(
        Kind::HttpRoute,
        json!({"targetRef": {"service": "r"}, "rules": [catch_all, beta]}),
        "spec.rules[1]",
        "unreachable: rules[0] matches every request",
    );
    assert_error(
        Kind::HttpRoute,
        json!({"targetRef": {"service": "r"}, "rules": [beta, slash, beta]}),
        "spec.rules[2]",
        "unreachable: rules[1]",
    );
    // The catch-all last is the way to write it.
    assert!(
        errors(Kind::HttpRoute, json!({"targetRef": {"service": "r"}, "rules": [beta, catch_all]}))
            .is_empty()
    );
}

#[test]
fn an_app_port_is_never_a_port_the_sidecar_listens_on() {
    let svc = |ports: Value| json!({ "ports": ports });
    assert!(
        errors(Kind::Service, svc(json!([{"port": 9080, "protocol": "http", "appPort": 19080}]))).is_empty()
    );
    assert_error(
        Kind::Service,
        svc(json!([{"port": 9080, "protocol": "http", "appPort": 9090}, {"port": 9090, "protocol": "grpc"}])),
        "spec.ports[0].appPort",
        "a port of the service",
    );
    assert_error(
        Kind::Service,
        svc(json!([{"port": 9080, "protocol": "http", "appPort": 9080}])),
        "spec.ports[0].appPort",
        "a port of the service",
    );
    assert_error(
        Kind::Service,
        svc(
            json!([{"port": 1, "protocol": "http", "appPort": 7}, {"port": 2, "protocol": "http", "appPort": 7}]),
        ),
        "spec.ports[1].appPort",
        "listed twice",
    );
    assert_error(
        Kind::Service,
        svc(json!([{"port": 1, "protocol": "http", "appPort": 70000}])),
        "spec.ports[0].appPort",
        "between 1 and 65535",
    );
}

/// Issue #11, item 3: the tags a node registers with (`Tags::parse`, what the xDS server calls)
/// and the tags a route's backend or mirror selects are accepted by one rule: over a table of
/// edge cases, each pair is accepted by both or refused by both.
#[test]
fn a_tag_accepted_at_registration_is_selectable_by_a_route_and_the_reverse() {
    use trellis_model::Tags;
    let keys = [
        "version",
        "app.kubernetes.io/version",
        "example.com/tier",
        "a_b.c-d",
        "A1",
        &"k".repeat(63),
        "",
        "-canary",
        "_zone",
        "canary-",
        "a/b/c",
        "Example.com/x",
        "/x",
        "x/",
        "zone hint",
        &"k".repeat(64),
        "service",
        "mesh",
    ];
    let values = ["v2", "v1.2-rc", "", "X_1", &"v".repeat(63), "-v", "v_", "a b", "ü", &"v".repeat(64)];
    let (mut accepted, mut refused) = (0, 0);
    for k in keys {
        for v in values {
            let registers = Tags::parse([(k, v)]).is_ok();
            let backend = json!({"targetRef": {"service": "reviews"}, "rules": [{"backendRefs": [
                {"service": "reviews", "tags": {k: v}}
            ]}]});
            let mirror = json!({"targetRef": {"service": "reviews"}, "rules": [{
                "backendRefs": [{"service": "reviews"}],
                "mirror": {"service": "reviews", "tags": {k: v}}
            }]});
            for (what, spec) in [("backendRef", backend), ("mirror", mirror)] {
                let selectable = errors(Kind::HttpRoute, spec).is_empty();
                assert_eq!(
                    registers, selectable,
                    "{k:?}: {v:?}: registers {registers}, {what} selects {selectable}"
                );
            }
            if registers { accepted += 1 } else { refused += 1 }
        }
    }
    // Both sides of the rule are exercised.
    assert!(accepted >= 30 && refused >= 30, "{accepted} accepted, {refused} refused");
}
