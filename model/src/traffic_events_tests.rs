use super::*;
use crate::config::{AccessAction, AccessConfig, DefaultAccess, EdgeCalls, Verdict};

const T0: i64 = 1_800_000_000 / MINUTE * MINUTE;

fn edge(s: &str, d: &str) -> Edge {
    (s.to_owned(), d.to_owned())
}

fn at(i: i64) -> i64 {
    T0 + i * MINUTE
}

/// `requests` successful calls of `s → d` in minutes `range` (relative to T0).
fn steady(obs: &mut Observations, s: &str, d: &str, range: std::ops::Range<i64>, requests: u64) {
    for i in range {
        obs.minutes.insert((at(i), edge(s, d)), MinuteCalls { requests, ..Default::default() });
    }
}

fn kinds(events: &[TrafficEvent]) -> Vec<(EventKind, i64, Option<&str>, &str)> {
    events
        .iter()
        .map(|e| (e.kind, (e.minute - T0) / MINUTE, e.source.as_deref(), e.destination.as_str()))
        .collect()
}

#[test]
fn a_new_caller_seen_in_several_consecutive_minutes_is_exactly_one_event() {
    let t = Thresholds::default();
    let mut obs = Observations::default();
    obs.known_edges.insert(edge("productpage", "reviews"));
    steady(&mut obs, "productpage", "reviews", 0..30, 100);
    steady(&mut obs, "intruder", "reviews", 20..30, 5);
    // Examined in one scan, minute by minute, or each minute alone: one event, its first minute.
    let once = detect(&obs, at(0), at(30), &t);
    assert_eq!(kinds(&once), [(EventKind::NewCaller, 20, Some("intruder"), "reviews")]);
    let mut one_by_one = Vec::new();
    for i in 0..30 {
        one_by_one.extend(detect(&obs, at(i), at(i + 1), &t));
    }
    assert_eq!(one_by_one, once);
    assert_eq!(once[0].key(), format!("new-caller/intruder/reviews/{}", at(20)));
    assert_eq!(
        serde_json::to_value(&once[0].evidence).unwrap(),
        serde_json::json!({"kind": "new-caller", "calls": 5, "lookBackDays": 7.0,
            "knownCallers": ["productpage"], "knownCallersTotal": 1})
    );
}

#[test]
fn a_caller_known_from_the_look_back_or_a_services_first_callers_raise_nothing() {
    let t = Thresholds::default();
    let mut obs = Observations::default();
    // Called last week: known.
    obs.known_edges.insert(edge("batch", "reviews"));
    obs.known_edges.insert(edge("productpage", "reviews"));
    steady(&mut obs, "batch", "reviews", 5..6, 3);
    // A service nobody called before: its first callers are what is usual.
    steady(&mut obs, "web", "fresh", 3..10, 7);
    steady(&mut obs, "cron", "fresh", 3..4, 1);
    // A TCP edge counts by connections.
    obs.minutes.insert(
        (at(8), edge("mystery", "reviews")),
        MinuteCalls { tcp_connections: 2, ..Default::default() },
    );
    let events = detect(&obs, at(0), at(10), &t);
    assert_eq!(kinds(&events), [(EventKind::NewCaller, 8, Some("mystery"), "reviews")]);
    // But a second, later caller of the new service is new.
    steady(&mut obs, "late", "fresh", 9..10, 1);
    let events = detect(&obs, at(0), at(10), &t);
    assert_eq!(events.iter().filter(|e| e.destination == "fresh").count(), 1);
}

#[test]
fn a_denied_burst_is_one_event_at_its_first_minute_with_its_callers() {
    let t = Thresholds::default();
    let mut obs = Observations::default();
    let deny = |obs: &mut Observations, i: i64, source: Option<&str>, n: u64| {
        obs.denied.entry((at(i), "db".to_owned())).or_default().insert(source.map(str::to_owned), n);
    };
    // A trickle of 2 a minute is the baseline; 9 is under the floor.
    for i in 0..60 {
        deny(&mut obs, i, Some("legacy"), 2);
    }
    deny(&mut obs, 61, Some("legacy"), 9);
    // The burst: minutes 70 to 72, from two callers.
    for i in 70..73 {
        deny(&mut obs, i, Some("scanner"), 40);
        deny(&mut obs, i, None, 12);
    }
    let events = detect(&obs, at(60), at(80), &t);
    assert_eq!(kinds(&events), [(EventKind::DeniedBurst, 70, None, "db")]);
    assert_eq!(
        serde_json::to_value(&events[0].evidence).unwrap(),
        serde_json::json!({"kind": "denied-burst", "denials": 52, "recentMedian": 2.0, "threshold": 12.0,
            "recentMinutes": 60, "callers": [{"source": "scanner", "denials": 40}, {"source": null, "denials": 12}]})
    );
    assert_eq!(events[0].key(), format!("denied-burst/*/db/{}", at(70)));
}

#[test]
fn a_rate_far_outside_its_recent_range_is_an_event_each_way_and_noise_is_not() {
    let t = Thresholds::default();
    let mut obs = Observations::default();
    obs.known_edges.insert(edge("web", "api"));
    // Noisy but steady: 95 to 105 calls a minute.
    for i in 0..60 {
        let n = 95 + (i % 11) as u64;
        obs.minutes.insert((at(i), edge("web", "api")), MinuteCalls { requests: n, ..Default::default() });
    }
    steady(&mut obs, "web", "api", 60..62, 115);
    steady(&mut obs, "web", "api", 62..65, 400);
    steady(&mut obs, "web", "api", 65..66, 100);
    steady(&mut obs, "web", "api", 66..67, 20);
    steady(&mut obs, "web", "api", 67..68, 100);
    let events = detect(&obs, at(60), at(68), &t);
    assert_eq!(
        kinds(&events),
        [(EventKind::RateJump, 62, Some("web"), "api"), (EventKind::RateJump, 66, Some("web"), "api")]
    );
    let Evidence::RateJump {
        direction,
        calls_per_minute,
        recent_median,
        recent_min,
        recent_max,
        history_minutes,
        ..
    } = &events[0].evidence
    else {
        panic!("{events:?}")
    };
    assert_eq!(
        (*direction, *calls_per_minute, *recent_median, *recent_min, *recent_max, *history_minutes),
        (Direction::Up, 400, 100.0, 95, 115, 60)
    );
    assert!(matches!(events[1].evidence, Evidence::RateJump { direction: Direction::Down, .. }));
}

#[test]
fn a_young_or_small_edge_has_no_range_to_leave() {
    let t = Thresholds::default();
    let mut obs = Observations::default();
    obs.known_edges.insert(edge("web", "api"));
    obs.known_edges.insert(edge("cron", "api"));
    // Five minutes of history only.
    steady(&mut obs, "web", "api", 0..5, 10);
    steady(&mut obs, "web", "api", 5..6, 1000);
    // Small figures: from 2 to 25 a minute is under the absolute floor.
    steady(&mut obs, "cron", "api", 0..30, 2);
    steady(&mut obs, "cron", "api", 30..31, 25);
    assert_eq!(detect(&obs, at(0), at(31), &t), []);
}

#[test]
fn an_error_rate_far_above_its_range_is_an_event() {
    let t = Thresholds::default();
    let mut obs = Observations::default();
    obs.known_edges.insert(edge("web", "api"));
    for i in 0..30 {
        obs.minutes.insert(
            (at(i), edge("web", "api")),
            MinuteCalls { requests: 100, failures: i as u64 % 3, ..Default::default() },
        );
    }
    // 4 failures in 100 is no jump; 30 in 100 is, once, however long it lasts.
    obs.minutes.insert(
        (at(30), edge("web", "api")),
        MinuteCalls { requests: 100, failures: 4, ..Default::default() },
    );
    for i in 31..34 {
        obs.minutes.insert(
            (at(i), edge("web", "api")),
            MinuteCalls { requests: 100, failures: 30, ..Default::default() },
        );
    }
    let events = detect(&obs, at(30), at(34), &t);
    assert_eq!(kinds(&events), [(EventKind::ErrorRateJump, 31, Some("web"), "api")]);
    let Evidence::ErrorRateJump { error_rate, failures, requests, recent_median, threshold, .. } =
        &events[0].evidence
    else {
        panic!()
    };
    assert_eq!((*error_rate, *failures, *requests, *recent_median), (0.3, 30, 100, 0.01));
    assert!((threshold - 0.11).abs() < 1e-9, "{threshold}");
}

#[test]
fn a_flood_of_new_edges_records_a_bounded_number_of_events() {
    let t = Thresholds { max_events: 5, ..Default::default() };
    let mut obs = Observations::default();
    obs.known_edges.insert(edge("web", "api"));
    for i in 0..50 {
        steady(&mut obs, &format!("c{i}"), "api", 0..1, 1);
    }
    assert_eq!(detect(&obs, at(0), at(1), &t).len(), 5);
}

#[test]
fn the_draft_denies_the_newcomer_and_allows_the_usual_callers_under_either_default() {
    let source = |s: &str| Source { service: Some(s.to_owned()), identity: None };
    let spec =
        draft_policy("reviews", &["intruder".into()], &["productpage".into(), "intruder".into()], source)
            .unwrap();
    assert_eq!(spec.target_ref.service, "reviews");
    assert_eq!(spec.rules.len(), 2);
    assert_eq!((spec.rules[0].action, spec.rules[1].action), (AccessAction::Deny, AccessAction::Allow));
    assert_eq!(spec.rules[1].from, [source("productpage")]);
    let name = draft_policy_name("reviews");
    assert_eq!(name, "reviews-expected-callers");
    let ids = |s: &str| format!("spiffe://shop.test/ns/shop/sa/{s}");
    for default_access in [DefaultAccess::Allow, DefaultAccess::Deny] {
        let config = AccessConfig { policies: vec![(name.as_str(), &spec)], default_access };
        let verdict = |s: &str| {
            config
                .decide(
                    &EdgeCalls { source: s.into(), destination: "reviews".into(), calls: 1, l4: false },
                    &ids,
                )
                .verdict
        };
        assert_eq!(verdict("intruder"), Verdict::Denied, "{default_access:?}");
        assert_eq!(verdict("productpage"), Verdict::Allowed, "{default_access:?}");
    }
    // Nobody to name: no draft. A long destination still makes a valid name.
    assert_eq!(draft_policy("reviews", &[], &[], source), None);
    let long = "a".repeat(63);
    assert!(crate::ResourceName::parse(&draft_policy_name(&long)).is_ok());
}
