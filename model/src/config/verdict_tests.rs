use serde_json::json;

use super::*;

fn id(service: &str) -> String {
    format!("spiffe://shop.test/ns/shop/sa/{service}")
}

fn policy(target: &str, rules: serde_json::Value) -> AccessPolicySpec {
    serde_json::from_value(json!({ "targetRef": { "service": target }, "rules": rules })).expect("a policy")
}

fn edge(source: &str, destination: &str, calls: u64) -> EdgeCalls {
    EdgeCalls { source: source.into(), destination: destination.into(), calls, l4: false }
}

fn verdict(
    policies: &[(&str, &AccessPolicySpec)],
    default: DefaultAccess,
    caller: &str,
    l4: bool,
) -> Decision {
    decide(policies, default, &id(caller), &id, l4)
}

#[test]
fn default_deny_refuses_a_caller_no_rule_allows_and_names_it() {
    let allow = policy("reviews", json!([{ "action": "Allow", "from": [{ "service": "productpage" }] }]));
    let p = [("reviews-access", &allow)];
    assert_eq!(
        verdict(&p, DefaultAccess::Deny, "productpage", false),
        Decision { verdict: Verdict::Allowed, rule: Some("reviews-access/rules/0".into()) }
    );
    assert_eq!(
        verdict(&p, DefaultAccess::Deny, "ratings", false),
        Decision { verdict: Verdict::Denied, rule: Some(DEFAULT_DENY.into()) }
    );
    assert_eq!(verdict(&p, DefaultAccess::Allow, "ratings", false).verdict, Verdict::Allowed);
}

#[test]
fn a_deny_rule_wins_over_an_allow_and_is_named() {
    let both = policy(
        "reviews",
        json!([
            { "action": "Allow", "from": [{ "service": "productpage" }] },
            { "action": "Deny", "from": [{ "identity": id("productpage") }] },
        ]),
    );
    let d = verdict(&[("p", &both)], DefaultAccess::Allow, "productpage", false);
    assert_eq!(d, Decision { verdict: Verdict::Denied, rule: Some("p/rules/1".into()) });
}

#[test]
fn request_conditions_decide_call_by_call_over_http_and_fail_closed_over_tcp() {
    let to = json!({ "methods": ["GET"] });
    let deny = policy("db", json!([{ "action": "Deny", "from": [{ "service": "web" }], "to": to }]));
    let allow = policy("db", json!([{ "action": "Allow", "from": [{ "service": "web" }], "to": to }]));
    let audit = policy("db", json!([{ "action": "Audit", "from": [{ "service": "web" }] }]));

    assert_eq!(
        verdict(&[("d", &deny)], DefaultAccess::Allow, "web", false).verdict,
        Verdict::DependsOnRequest
    );
    assert_eq!(verdict(&[("d", &deny)], DefaultAccess::Allow, "web", true).verdict, Verdict::Denied);
    assert_eq!(
        verdict(&[("a", &allow)], DefaultAccess::Deny, "web", false).verdict,
        Verdict::DependsOnRequest
    );
    assert_eq!(
        verdict(&[("a", &allow)], DefaultAccess::Deny, "web", true),
        Decision { verdict: Verdict::Denied, rule: Some(DEFAULT_DENY.into()) }
    );
    // Audit rules never refuse.
    assert_eq!(verdict(&[("x", &audit)], DefaultAccess::Allow, "web", false).verdict, Verdict::Allowed);
}

#[test]
fn impact_lists_exactly_the_edges_whose_verdict_changes() {
    let current = policy(
        "reviews",
        json!([{ "action": "Allow", "from": [{ "service": "productpage" }, { "service": "admin" }] }]),
    );
    let before =
        AccessConfig { policies: vec![("reviews-access", &current)], default_access: DefaultAccess::Deny };
    // Proposed: replace the policy with one that drops `admin` and lets `ratings` in.
    let proposed = policy(
        "reviews",
        json!([{ "action": "Allow", "from": [{ "service": "productpage" }, { "service": "ratings" }] }]),
    );
    let after = before.with("reviews-access", &proposed);
    let edges = [
        edge("productpage", "reviews", 900),
        edge("admin", "reviews", 7),
        edge("ratings", "reviews", 3),
        edge("productpage", "details", 500),
    ];
    let changed = impact(&before, &after, &edges, &id);
    let summary: Vec<_> = changed.iter().map(|e| (e.source.as_str(), e.calls, e.after.verdict)).collect();
    assert_eq!(summary, [("admin", 7, Verdict::Denied), ("ratings", 3, Verdict::Allowed)]);
    assert_eq!(changed[0].after.rule.as_deref(), Some(DEFAULT_DENY));
    assert_eq!(changed[1].after.rule.as_deref(), Some("reviews-access/rules/0"));
    let totals = ImpactTotals::of(&changed);
    assert_eq!((totals.newly_denied, totals.newly_allowed, totals.depends_on_request), (7, 3, 0));
}

#[test]
fn a_new_policy_is_added_beside_the_others() {
    let allow_all = policy("reviews", json!([{ "action": "Allow", "from": [{ "service": "productpage" }] }]));
    let before = AccessConfig { policies: vec![("a", &allow_all)], default_access: DefaultAccess::Deny };
    let deny = policy("reviews", json!([{ "action": "Deny", "from": [{ "service": "productpage" }] }]));
    let after = before.with("b", &deny);
    assert_eq!(after.policies.len(), 2);
    let changed = impact(&before, &after, &[edge("productpage", "reviews", 12)], &id);
    assert_eq!(changed.len(), 1);
    assert_eq!(changed[0].after, Decision { verdict: Verdict::Denied, rule: Some("b/rules/0".into()) });
}
