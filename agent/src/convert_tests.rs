//! The conversion against what the real translation (`trellis_xds::envoy_sidecar`) serves
//! for the seed mesh, what it must refuse, and arbitrary bytes.

use envoy_types::pb::envoy::service::discovery::v3::Resource;
use envoy_types::util::pack_any;
use http::{HeaderMap, Method};
use trellis_model::config::{DefaultAccess, Kind, MtlsMode, Spec};
use trellis_xds::{Endpoint, MeshView, Resources};

use super::*;

const TD: &str = "shop.acme.trellis.internal";

/// The seed mesh (`examples/reviews.yaml`), only the documents of `kinds`, with one v1 and
/// one v2 instance of reviews.
fn seed(kinds: &[&str]) -> MeshView {
    let mut view = MeshView::new(
        "shop",
        trellis_ca::TrustDomain::parse(TD).unwrap(),
        MtlsMode::Strict,
        DefaultAccess::Deny,
    );
    for doc in include_str!("../../examples/reviews.yaml").split("\n---\n") {
        let v: serde_json::Value = serde_yaml::from_str(doc).unwrap();
        let kind = v["kind"].as_str().unwrap();
        if kind == "Mesh" || !kinds.contains(&kind) {
            continue;
        }
        let name = v["metadata"]["name"].as_str().unwrap().to_owned();
        view.add(name, Spec::parse(Kind::lookup(kind).unwrap(), "spec", v["spec"].clone()).unwrap().spec);
    }
    let ep = |ip: &str, version: &str| Endpoint {
        service: "reviews".into(),
        address: ip.parse().unwrap(),
        port: 9080,
        tags: trellis_model::config::Tags::parse([("version", version)]).unwrap(),
        zone: String::new(),
        healthy: true,
    };
    view.endpoints = vec![ep("127.0.0.2", "v1"), ep("127.0.0.3", "v2")];
    view
}

fn local() -> Local {
    Local {
        address: "127.0.0.9".parse().unwrap(),
        app_ports: BTreeMap::from([(9080, 19080)]),
        id: SpiffeId::parse(&format!("spiffe://{TD}/ns/shop/sa/reviews")).unwrap(),
    }
}

fn all(r: &Resources) -> Vec<(String, Any)> {
    let mut out = Vec::new();
    out.extend(r.listeners.values().map(|l| (l.name.clone(), pack_any(l.clone()))));
    out.extend(r.routes.values().map(|x| (x.name.clone(), pack_any(x.clone()))));
    out.extend(r.clusters.values().map(|x| (x.name.clone(), pack_any(x.clone()))));
    out.extend(r.endpoints.values().map(|x| (x.cluster_name.clone(), pack_any(x.clone()))));
    out
}

fn basic() -> Resources {
    trellis_xds::envoy_sidecar(&seed(&["Service", "HTTPRoute", "AccessPolicy"]), "reviews", &[9080])
}

fn id(service: &str) -> SpiffeId {
    SpiffeId::parse(&format!("spiffe://{TD}/ns/shop/sa/{service}")).unwrap()
}

fn view<'a>(method: &'a Method, path: &'a str, headers: &'a HeaderMap) -> RequestView<'a> {
    RequestView { method, path, query: None, authority: Some("reviews.shop:9080"), headers }
}

#[test]
fn the_seed_sidecar_resources_convert() {
    let r = basic();
    for (name, any) in all(&r) {
        convert(&any.type_url, &any, &local()).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let Converted::Listener(inbound) =
        convert(&PbListener::type_url(), &pack_any(r.listeners["inbound:9080"].clone()), &local()).unwrap()
    else {
        panic!("a listener")
    };
    assert_eq!(inbound.addr, "127.0.0.9:9080".parse().unwrap(), "bound on the agent's own address");
    assert_eq!(inbound.side, Side::Inbound { plaintext: false }, "STRICT");
    let Converted::Cluster(app) =
        convert(&PbCluster::type_url(), &pack_any(r.clusters["inbound:9080"].clone()), &local()).unwrap()
    else {
        panic!("a cluster")
    };
    assert_eq!(app.target, Target::Local("127.0.0.1:19080".parse().unwrap()), "the --app-port override");
    let Converted::Cluster(v2) = convert(
        &PbCluster::type_url(),
        &pack_any(r.clusters["reviews.shop:9080~version=v2"].clone()),
        &local(),
    )
    .unwrap() else {
        panic!("a cluster")
    };
    assert_eq!(v2.target, Target::Mesh { eds: "reviews.shop:9080~version=v2".into(), peer: id("reviews") });

    let name = "outbound:reviews.shop:9080";
    let Converted::Routes(table) =
        convert(&RouteConfiguration::type_url(), &pack_any(r.routes[name].clone()), &local()).unwrap()
    else {
        panic!("routes")
    };
    let get = Method::GET;
    let mut beta = HeaderMap::new();
    beta.insert("x-beta", "true".parse().unwrap());
    let route = table.find(&view(&get, "/reviews/1", &beta)).unwrap();
    assert_eq!(route.backends, [("reviews.shop:9080~version=v2".to_owned(), 1)]);
    let plain = HeaderMap::new();
    let route = table.find(&view(&get, "/reviews/1", &plain)).unwrap();
    assert_eq!(
        route.backends,
        [("reviews.shop:9080~version=v1".to_owned(), 75), ("reviews.shop:9080~version=v2".to_owned(), 25)]
    );
    assert_eq!(
        (route.pick(74), route.pick(75), route.pick(99)),
        ("reviews.shop:9080~version=v1", "reviews.shop:9080~version=v2", "reviews.shop:9080~version=v2")
    );
    assert_eq!(route.timeout, Some(Duration::from_secs(10)));
    let retry = route.retry.as_ref().unwrap();
    assert_eq!((retry.retries, retry.per_try), (2, Some(Duration::from_secs(2))));
    assert_eq!(retry.on, [RetryOn::FiveXx, RetryOn::ConnectFailure]);
}

#[test]
fn access_policies_are_evaluated_on_the_peer_and_the_request() {
    let r = basic();
    let Converted::Listener(inbound) =
        convert(&PbListener::type_url(), &pack_any(r.listeners["inbound:9080"].clone()), &local()).unwrap()
    else {
        panic!("a listener")
    };
    let Handler::Http { access, .. } = &inbound.handler else { panic!("HTTP") };
    let h = HeaderMap::new();
    let (get, post) = (Method::GET, Method::POST);
    let allowed = |peer: Option<&SpiffeId>, m: &Method, path: &str| {
        evaluate(access, peer, Some(&view(m, path, &h))).denied.is_none()
    };
    assert!(allowed(Some(&id("productpage")), &get, "/reviews/1"));
    assert!(!allowed(Some(&id("productpage")), &post, "/reviews/1"), "methods: [GET]");
    assert!(!allowed(Some(&id("productpage")), &get, "/admin"), "paths: /reviews");
    assert!(!allowed(Some(&id("stranger")), &get, "/reviews/1"), "default deny");
    assert!(!allowed(None, &get, "/reviews/1"), "no identity, no access");
}

fn refusal(r: &Resources, type_url: &str, name: &str) -> String {
    let any = all(r).into_iter().find(|(n, a)| n == name && a.type_url == type_url).unwrap().1;
    convert(type_url, &any, &local()).err().unwrap_or_else(|| panic!("{name} was accepted"))
}

#[test]
fn what_the_agent_cannot_honour_is_refused_with_its_path() {
    let full = trellis_xds::envoy_sidecar(
        &seed(&["Service", "HTTPRoute", "AccessPolicy", "CircuitBreaker", "HealthCheck", "RateLimit"]),
        "reviews",
        &[9080],
    );
    for (name, any) in all(&full) {
        convert(&any.type_url, &any, &local())
            .unwrap_or_else(|e| panic!("the whole seed is honoured: {name}: {e}"));
    }
    let any = pack_any(full.clusters["reviews.shop:9080"].clone());
    let Converted::Cluster(c) = convert(&PbCluster::type_url(), &any, &local()).unwrap() else {
        panic!("a cluster")
    };
    let check = c.health_check.as_ref().unwrap();
    assert_eq!(
        (check.http_path.as_deref(), check.interval, check.unhealthy_threshold),
        (Some("/health"), Duration::from_secs(10), 3)
    );
    let any = pack_any(full.listeners["inbound:9080"].clone());
    let Converted::Listener(inbound) = convert(&PbListener::type_url(), &any, &local()).unwrap() else {
        panic!("a listener")
    };
    let Handler::Http { rate_limit, .. } = &inbound.handler else { panic!("HTTP") };
    let seed_limit =
        crate::resilience::RateLimit { max: 200, per_fill: 100, interval: Duration::from_secs(1) };
    assert_eq!(*rate_limit, Some(seed_limit), "the seed's local rate limit is honoured");

    let mut view = seed(&["Service", "HTTPRoute"]);
    let route = view.http_routes.get_mut("reviews").unwrap();
    route.rules[0].fault =
        serde_json::from_value(serde_json::json!({"abort": {"httpStatus": 503, "percent": 10}})).unwrap();
    let r = trellis_xds::envoy_sidecar(&view, "reviews", &[9080]);
    let e = refusal(&r, &RouteConfiguration::type_url(), "outbound:reviews.shop:9080");
    assert!(e.contains("routes[0] \"reviews/0/0\"") && e.contains("fault injection"), "{e}");

    let grpc = trellis_xds::grpc_client(&view);
    let e = refusal(&grpc, &PbListener::type_url(), "reviews.shop:9080");
    assert!(e.contains("api_listener"), "{e}");
}

/// Arbitrary bytes, and valid resources with bytes flipped, never panic the conversion.
#[test]
fn arbitrary_input_is_refused_or_converted_never_a_panic() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(12);
    let valid = all(&basic());
    for i in 0..20_000 {
        let (_, base) = &valid[i % valid.len()];
        let mut value = base.value.clone();
        if i % 4 == 0 {
            value = (0..rng.random_range(0..256)).map(|_| rng.random()).collect();
        } else {
            for _ in 0..rng.random_range(1..4) {
                let at = rng.random_range(0..value.len());
                value[at] = rng.random();
            }
        }
        let any = Any { type_url: base.type_url.clone(), value };
        let _ = convert(&base.type_url, &any, &local());
    }
    let r = Resource { name: "x".into(), ..Default::default() };
    assert!(
        crate::state::State::new(local()).next(&PbListener::type_url(), &[r], &[]).is_err(),
        "a resource without a body"
    );
}

#[test]
fn an_audit_rule_logs_and_lets_the_request_through() {
    let mut mesh = seed(&["Service", "AccessPolicy"]);
    let audit = serde_json::json!({
        "targetRef": {"service": "reviews"},
        "rules": [{"action": "Audit", "from": [{"service": "productpage"}]}],
    });
    let kind = Kind::lookup("AccessPolicy").unwrap();
    mesh.add("watch".into(), Spec::parse(kind, "spec", audit).unwrap().spec);
    let r = trellis_xds::envoy_sidecar(&mesh, "reviews", &[9080]);
    let any = pack_any(r.listeners["inbound:9080"].clone());
    let Converted::Listener(inbound) = convert(&PbListener::type_url(), &any, &local()).unwrap() else {
        panic!("a listener")
    };
    let Handler::Http { access, .. } = &inbound.handler else { panic!("HTTP") };
    let (h, get) = (HeaderMap::new(), Method::GET);
    let verdict = evaluate(access, Some(&id("productpage")), Some(&view(&get, "/reviews/1", &h)));
    assert_eq!(verdict, Verdict { denied: None, audited: vec!["watch/rules/0".into()] });
}

#[test]
fn circuit_breakers_and_outlier_detection_are_honoured() {
    let r =
        trellis_xds::envoy_sidecar(&seed(&["Service", "HTTPRoute", "CircuitBreaker"]), "reviews", &[9080]);
    let any = pack_any(r.clusters["reviews.shop:9080~version=v1"].clone());
    let Converted::Cluster(c) = convert(&PbCluster::type_url(), &any, &local()).unwrap() else {
        panic!("a cluster")
    };
    assert_eq!(c.limit, Some(100), "the smaller of maxConnections 100 and maxRequests 200");
    let policy = crate::resilience::OutlierPolicy {
        consecutive_5xx: 5,
        base_ejection: Duration::from_secs(30),
        max_ejection_percent: 50,
    };
    assert_eq!(c.outlier, Some(policy));
}
