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
    RequestView { method, path, query: None, uri_authority: Some("reviews.shop:9080"), headers }
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
    assert_eq!(
        v2.target,
        Target::Mesh { eds: "reviews.shop:9080~version=v2".into(), peer: Arc::new(id("reviews")) }
    );

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
    route.rules[0].mirror =
        serde_json::from_value(serde_json::json!({"service": "reviews", "percent": 10})).unwrap();
    let r = trellis_xds::envoy_sidecar(&view, "reviews", &[9080]);
    let e = refusal(&r, &RouteConfiguration::type_url(), "outbound:reviews.shop:9080");
    assert!(e.contains("routes[0] \"reviews/0/0\"") && e.contains("request mirroring"), "{e}");

    let mut ring = r.clusters["reviews.shop:9080"].clone();
    ring.lb_policy = LbPolicy::RingHash as i32;
    let e = convert(&PbCluster::type_url(), &pack_any(ring), &local()).unwrap_err();
    assert!(e.contains("cluster \"reviews.shop:9080\"") && e.contains("lb_policy 2"), "{e}");

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

fn outbound_routes(r: &Resources) -> Arc<RouteTable> {
    let any = pack_any(r.routes["outbound:reviews.shop:9080"].clone());
    let Converted::Routes(table) = convert(&RouteConfiguration::type_url(), &any, &local()).unwrap() else {
        panic!("routes")
    };
    table
}

#[test]
fn a_routes_faults_are_converted_and_decided_per_request() {
    let mut view = seed(&["Service", "HTTPRoute"]);
    let route = view.http_routes.get_mut("reviews").unwrap();
    route.rules[0].fault = serde_json::from_value(serde_json::json!({
        "abort": {"httpStatus": 503, "percent": 10},
        "delay": {"fixedDelay": "200ms", "percent": 100},
    }))
    .unwrap();
    let r = trellis_xds::envoy_sidecar(&view, "reviews", &[9080]);
    let table = outbound_routes(&r);
    let fault = table.hosts[0].routes[0].fault.clone().expect("the rule's faults");
    let expected = Fault {
        delay: Some((Duration::from_millis(200), Share(1_000_000))),
        abort: Some((Abort::Http(http::StatusCode::SERVICE_UNAVAILABLE), Share(100_000))),
    };
    assert_eq!(fault, expected);
    assert!(table.hosts[0].routes.last().unwrap().fault.is_none(), "the catch-all injects nothing");
    // The outbound listener carries the (empty) filter the route overrides.
    let any = pack_any(r.listeners["outbound:reviews.shop:9080"].clone());
    let Converted::Listener(l) = convert(&PbListener::type_url(), &any, &local()).unwrap() else {
        panic!("a listener")
    };
    let Handler::Http { fault: filter, .. } = &l.handler else { panic!("HTTP") };
    assert_eq!(filter.as_ref(), Some(&Fault::default()));

    // 10 % of the rolls abort, every one is delayed.
    let (delayed, aborted) = (0..Share::PER).step_by(1_000).fold((0, 0), |(d, a), roll| {
        let i = fault.decide(roll, roll);
        (d + usize::from(i.delay == Some(Duration::from_millis(200))), a + usize::from(i.abort.is_some()))
    });
    assert_eq!((delayed, aborted), (1_000, 100));
    assert_eq!(Fault::default().decide(0, 0), Injected::default(), "an empty filter injects nothing");
    assert_eq!(grpc_code_of(http::StatusCode::SERVICE_UNAVAILABLE), 14, "UNAVAILABLE");
    assert_eq!(grpc_code_of(http::StatusCode::IM_A_TEAPOT), 2, "UNKNOWN");
}

#[test]
fn fault_configs_take_envoys_fractions_and_grpc_statuses_and_refuse_the_rest() {
    use envoy_types::pb::envoy::extensions::filters::common::fault::v3::FaultDelay;
    use envoy_types::pb::envoy::extensions::filters::common::fault::v3::fault_delay::{
        FaultDelaySecifier, HeaderDelay,
    };
    use envoy_types::pb::envoy::extensions::filters::http::fault::v3::FaultAbort;
    use envoy_types::pb::envoy::extensions::filters::http::fault::v3::fault_abort::ErrorType;
    use envoy_types::pb::envoy::r#type::v3::FractionalPercent;
    let pct = |numerator, denominator| Some(FractionalPercent { numerator, denominator });
    let abort = |e, p| Some(FaultAbort { error_type: Some(e), percentage: p, ..Default::default() });
    let grpc = HttpFault { abort: abort(ErrorType::GrpcStatus(14), pct(25, 1)), ..Default::default() };
    assert_eq!(fault_config(&grpc).unwrap().abort, Some((Abort::Grpc(14), Share(2_500))), "25 in 10,000");
    let over = HttpFault { abort: abort(ErrorType::HttpStatus(500), pct(300, 0)), ..Default::default() };
    let all = Some((Abort::Http(http::StatusCode::INTERNAL_SERVER_ERROR), Share(1_000_000)));
    assert_eq!(fault_config(&over).unwrap().abort, all, "above the denominator: every request");
    let unset = HttpFault { abort: abort(ErrorType::HttpStatus(500), None), ..Default::default() };
    assert_eq!(
        fault_config(&unset).unwrap().abort.unwrap().1,
        Share(0),
        "no percentage: none, as Envoy reads it"
    );

    let refused = [
        (
            HttpFault { abort: abort(ErrorType::HttpStatus(99), pct(1, 0)), ..Default::default() },
            "http_status 99",
        ),
        (
            HttpFault { abort: abort(ErrorType::GrpcStatus(17), pct(1, 0)), ..Default::default() },
            "grpc_status 17",
        ),
        (
            HttpFault {
                delay: Some(FaultDelay {
                    fault_delay_secifier: Some(FaultDelaySecifier::HeaderDelay(HeaderDelay {})),
                    percentage: pct(1, 0),
                }),
                ..Default::default()
            },
            "a delay chosen by a header",
        ),
        (
            HttpFault {
                delay: Some(FaultDelay {
                    fault_delay_secifier: Some(FaultDelaySecifier::FixedDelay(PbDuration {
                        seconds: 2 * 24 * 3_600,
                        nanos: 0,
                    })),
                    percentage: pct(1, 0),
                }),
                ..Default::default()
            },
            "at most",
        ),
        (HttpFault { downstream_nodes: vec!["x".into()], ..Default::default() }, "callers only"),
        (
            HttpFault { max_active_faults: Some(Default::default()), ..Default::default() },
            "max_active_faults",
        ),
    ];
    for (f, why) in refused {
        let e = fault_config(&f).unwrap_err();
        assert!(e.contains(why), "{f:?}: {e}");
    }
}

#[test]
fn sidecar_clusters_balance_by_least_request_over_two_choices() {
    let r = basic();
    let any = pack_any(r.clusters["reviews.shop:9080~version=v1"].clone());
    let Converted::Cluster(c) = convert(&PbCluster::type_url(), &any, &local()).unwrap() else {
        panic!("a cluster")
    };
    assert_eq!(c.lb, crate::resilience::LbPolicy::LeastRequest { choices: 2 });
    let mut rr = r.clusters["reviews.shop:9080~version=v1"].clone();
    rr.lb_policy = LbPolicy::RoundRobin as i32;
    let Converted::Cluster(c) = convert(&PbCluster::type_url(), &pack_any(rr), &local()).unwrap() else {
        panic!("a cluster")
    };
    assert_eq!(c.lb, crate::resilience::LbPolicy::RoundRobin);

    // The less busy of the two drawn wins, the first drawn on a tie.
    let lr = crate::resilience::LbPolicy::LeastRequest { choices: 2 };
    let draws = |picks: [usize; 2]| {
        let mut it = picks.into_iter();
        move || it.next().unwrap()
    };
    assert_eq!(lr.choose(&[5, 1, 0], 0, draws([0, 1])), 1);
    assert_eq!(lr.choose(&[5, 1, 0], 0, draws([2, 0])), 2);
    assert_eq!(lr.choose(&[3, 3], 0, draws([1, 0])), 1);
    let rr = crate::resilience::LbPolicy::RoundRobin;
    assert_eq!((0..4).map(|t| rr.choose(&[9, 0, 0], t, || unreachable!())).collect::<Vec<_>>(), [0, 1, 2, 0]);
    // Over many random draws, a host with requests piled up gets few of the new ones.
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut got = [0usize; 2];
    for _ in 0..10_000 {
        got[lr.choose(&[10, 0], 0, || rng.random_range(0..2))] += 1;
    }
    assert!((2_300..2_700).contains(&got[0]), "the busy host only when drawn twice (1 in 4): {got:?}");
}

/// Random HTTPRoutes, through the API's own validation and the real translation: every one
/// the API accepts (mirroring aside, which the agent refuses) is converted, with every share
/// a fraction of a million and every abort a status the API allowed.
#[test]
fn every_route_the_api_accepts_is_converted() {
    use rand::prelude::IndexedRandom;
    use rand::{Rng, SeedableRng};
    use serde_json::{Value, json};
    let mut rng = rand::rngs::StdRng::seed_from_u64(2026);
    let (mut accepted, mut faults) = (0, 0);
    for _ in 0..2_000 {
        let mut rules = Vec::new();
        for _ in 0..rng.random_range(1..4) {
            let mut rule = serde_json::Map::new();
            let matches: Vec<Value> = (0..rng.random_range(0..3))
                .map(|_| {
                    let path = match rng.random_range(0..3) {
                        0 => json!({"type": "PathPrefix", "value": *["/", "/reviews", "/a/b"].choose(&mut rng).unwrap()}),
                        1 => json!({"type": "Exact", "value": "/reviews/1"}),
                        _ => json!({"type": "RegularExpression", "value": *["/r.*", "/[0-9]+", "(a|b)*"].choose(&mut rng).unwrap()}),
                    };
                    let kind = *["Exact", "RegularExpression"].choose(&mut rng).unwrap();
                    let header = json!({"type": kind, "name": "x-beta", "value": "tr.e"});
                    let method = *["GET", "POST", "DELETE"].choose(&mut rng).unwrap();
                    json!({"path": path, "headers": [header], "method": method})
                })
                .collect();
            if !matches.is_empty() {
                rule.insert("matches".into(), matches.into());
            }
            let backends: Vec<Value> = (0..rng.random_range(1..3))
                .map(|_| {
                    let version = *["v1", "v2"].choose(&mut rng).unwrap();
                    json!({"service": "reviews", "tags": {"version": version}, "weight": rng.random_range(0..1_020_000)})
                })
                .collect();
            rule.insert("backendRefs".into(), backends.into());
            if rng.random_bool(0.3) {
                rule.insert(
                    "timeouts".into(),
                    json!({"request": format!("{}ms", rng.random_range(0..100_000))}),
                );
            }
            if rng.random_bool(0.3) {
                let on = *["5xx", "reset", "unavailable", "gateway-error"].choose(&mut rng).unwrap();
                rule.insert("retry".into(), json!({"attempts": rng.random_range(0..11), "retryOn": [on]}));
            }
            if rng.random_bool(0.5) {
                let mut fault = serde_json::Map::new();
                if rng.random_bool(0.6) {
                    let delay = format!("{}ms", rng.random_range(0..90_000_000u64));
                    fault.insert(
                        "delay".into(),
                        json!({"fixedDelay": delay, "percent": rng.random_range(0..102)}),
                    );
                }
                if rng.random_bool(0.6) {
                    let abort = json!({"httpStatus": rng.random_range(195..605), "percent": rng.random_range(0..102)});
                    fault.insert("abort".into(), abort);
                }
                rule.insert("fault".into(), fault.into());
            }
            rules.push(Value::Object(rule));
        }
        let spec = json!({"targetRef": {"service": "reviews"}, "rules": rules});
        let Ok(parsed) = Spec::parse(Kind::lookup("HTTPRoute").unwrap(), "spec", spec.clone()) else {
            continue;
        };
        accepted += 1;
        let mut view = seed(&["Service"]);
        view.add("reviews".into(), parsed.spec);
        let r = trellis_xds::envoy_sidecar(&view, "productpage", &[]);
        for (name, any) in all(&r) {
            convert(&any.type_url, &any, &local()).unwrap_or_else(|e| panic!("{spec}\n{name}: {e}"));
        }
        for host in &outbound_routes(&r).hosts {
            for f in host.routes.iter().filter_map(|r| r.fault.as_ref()) {
                faults += 1;
                let shares = f.delay.map(|d| d.1).into_iter().chain(f.abort.map(|a| a.1));
                assert!(shares.into_iter().all(|s| s.0 <= Share::PER), "{f:?}");
                if let Some((Abort::Http(s), _)) = f.abort {
                    assert!((200..600).contains(&s.as_u16()), "{f:?}");
                }
            }
        }
    }
    assert!(
        accepted > 300 && faults > 100,
        "enough accepted to mean something: {accepted} routes, {faults} faults"
    );
}
