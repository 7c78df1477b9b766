//! Delta (incremental) ADS, one stream at a time (XDS.md §2, §7).
//!
//! [`Stream`] holds, per type URL, what one client subscribed to (names and/or the wildcard),
//! which version of each resource it holds, the responses it has not answered yet, and the
//! versions it rejected. The server feeds it each request and each new [`Snapshot`]; it answers
//! with the responses to send: only the resources whose version changed for this client, and
//! `removed_resources` for names that are gone or do not exist, in the order CDS → EDS → LDS →
//! RDS, then any other type. Content a client NACKed is not sent again until it changes.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource,
};

use crate::sotw::{MAX_NAMES, Snapshot, StreamError, type_order};

/// Unanswered responses remembered per type; an answer to an older one counts as stale.
const MAX_PENDING: usize = 64;

/// A rejected response: its nonce, its `system_version_info`, and the client's reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nack {
    pub nonce: String,
    pub version: String,
    pub error: String,
}

/// A response the client has not answered yet, with what it needs to undo a NACK.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pending {
    nonce: String,
    version: String,
    /// name → (version the client held before, version sent).
    sent: BTreeMap<String, (Option<String>, String)>,
}

/// What the server and the ledger know about one type on one stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TypeState {
    /// Subscribed to every resource of the type: `"*"`, or Envoy's legacy empty first request.
    pub wildcard: bool,
    /// Names subscribed explicitly (with or without the wildcard).
    pub names: BTreeSet<String>,
    /// What the client holds: name → version.
    held: BTreeMap<String, String>,
    /// Explicit names already reported as not existing, so that is said once.
    absent: BTreeSet<String>,
    /// name → the version the client rejected, never sent to it again.
    rejected: BTreeMap<String, String>,
    pending: VecDeque<Pending>,
    /// Nonce of the last response sent.
    pub sent_nonce: Option<String>,
    /// Nonce of the last response the client accepted.
    pub acked_nonce: Option<String>,
    /// The last rejection; cleared by an ACK.
    pub nacked: Option<Nack>,
    /// Responses sent for this type.
    pub responses: u64,
}

impl TypeState {
    /// What the client holds: name → version. After a NACK, the rejected resources count at
    /// the version held before.
    pub fn held(&self) -> &BTreeMap<String, String> {
        &self.held
    }

    /// Whether the client accepted the last response sent.
    pub fn acked(&self) -> bool {
        self.sent_nonce.is_some() && self.sent_nonce == self.acked_nonce
    }

    /// What the client holds as one string: a hash of the names and versions in name order,
    /// equal to the SotW `version_info` of the same set.
    pub fn version(&self) -> String {
        let mut h = String::new();
        for (name, v) in &self.held {
            h.push_str(name);
            h.push('\u{0}');
            h.push_str(v);
            h.push('\u{0}');
        }
        hex::encode(&ring::digest::digest(&ring::digest::SHA256, h.as_bytes()).as_ref()[..12])
    }

    fn wants(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }

    /// A NACK: remember the versions sent as rejected, and go back to what the client held.
    /// Removals are taken as done, so a rejected removal is not repeated forever.
    fn reject(&mut self, p: &Pending) {
        for (name, (prior, sent)) in &p.sent {
            self.rejected.insert(name.clone(), sent.clone());
            if self.held.get(name) == Some(sent) {
                match prior {
                    Some(v) => self.held.insert(name.clone(), v.clone()),
                    None => self.held.remove(name),
                };
            }
        }
    }
}

/// One Delta ADS stream.
#[derive(Debug, Default)]
pub struct Stream {
    node: Option<String>,
    nonce: u64,
    pub types: BTreeMap<String, TypeState>,
}

/// How a request relates to what was sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// The first request of a type on this stream.
    Initial,
    /// A later request without a nonce: a change of subscriptions only.
    Spontaneous,
    /// The client accepted the response with this nonce.
    Ack { nonce: String },
    /// The client rejected the response with this nonce, whose `system_version_info` was `version`.
    Nack { nonce: String, version: String, error: String },
    /// A nonce with no response awaiting an answer (answered already, or never sent for this
    /// type): no ACK or NACK is recorded, but its subscription changes still apply.
    Stale { nonce: String },
}

impl Stream {
    /// The node id bound to this stream by its first request.
    pub fn node(&self) -> Option<&str> {
        self.node.as_deref()
    }

    /// Handles one request; returns how it was classified and the responses to send.
    pub fn on_request(
        &mut self,
        req: &DeltaDiscoveryRequest,
        snap: &Snapshot,
    ) -> Result<(Reply, Vec<DeltaDiscoveryResponse>), StreamError> {
        let id = req.node.as_ref().map(|n| n.id.clone()).filter(|id| !id.is_empty());
        match (&self.node, id) {
            (None, Some(id)) => self.node = Some(id),
            (Some(first), Some(now)) if *first != now => {
                return Err(StreamError::NodeChanged { first: first.clone(), now });
            }
            _ => {}
        }
        if req.type_url.is_empty() {
            return Err(StreamError::NoTypeUrl);
        }
        let asked = req.resource_names_subscribe.len() + req.resource_names_unsubscribe.len();
        for n in [asked, req.initial_resource_versions.len()] {
            if n > MAX_NAMES {
                return Err(StreamError::TooManyNames(n));
            }
        }
        let sub: BTreeSet<&str> =
            req.resource_names_subscribe.iter().map(String::as_str).filter(|n| *n != "*").collect();
        let unsub: BTreeSet<&str> =
            req.resource_names_unsubscribe.iter().map(String::as_str).filter(|n| *n != "*").collect();
        // Subscriptions add up in Delta, so bound the set they make, not only the request.
        let before = self.types.get(&req.type_url).map(|t| &t.names);
        let kept = before.map_or(0, |names| names.iter().filter(|n| !unsub.contains(n.as_str())).count());
        let added = sub
            .iter()
            .filter(|n| !before.is_some_and(|names| names.contains(**n)) && !unsub.contains(**n))
            .count();
        if kept + added > MAX_NAMES {
            return Err(StreamError::TooManyNames(kept + added));
        }
        let first = !self.types.contains_key(&req.type_url);
        let state = self.types.entry(req.type_url.clone()).or_default();

        let reply = if req.response_nonce.is_empty() {
            if first { Reply::Initial } else { Reply::Spontaneous }
        } else if let Some(i) = state.pending.iter().position(|p| p.nonce == req.response_nonce) {
            // Answers come in order: the client is past every older response too.
            let answered = state.pending.drain(..=i).next_back().expect("position is in range");
            let nonce = answered.nonce.clone();
            if let Some(err) = &req.error_detail {
                state.reject(&answered);
                let nack = Nack { nonce, version: answered.version, error: err.message.clone() };
                state.nacked = Some(nack.clone());
                Reply::Nack { nonce: nack.nonce, version: nack.version, error: nack.error }
            } else {
                state.acked_nonce = Some(nonce.clone());
                state.nacked = None;
                Reply::Ack { nonce }
            }
        } else {
            Reply::Stale { nonce: req.response_nonce.clone() }
        };

        // Subscriptions apply whatever the nonce: subscribe first, then unsubscribe.
        let legacy_wildcard =
            first && req.resource_names_subscribe.is_empty() && req.resource_names_unsubscribe.is_empty();
        if legacy_wildcard || req.resource_names_subscribe.iter().any(|n| n == "*") {
            state.wildcard = true;
        }
        // A name in `subscribe` is sent even if the client seems to have it (XDS.md §2), unless
        // it is content the client rejected: resending that only earns another NACK.
        let mut force: BTreeSet<String> = BTreeSet::new();
        for name in &sub {
            state.names.insert((*name).to_owned());
            force.insert((*name).to_owned());
        }
        if req.resource_names_unsubscribe.iter().any(|n| n == "*") {
            state.wildcard = false;
            // The client drops what only the wildcard covered.
            let names = &state.names;
            state.held.retain(|n, _| names.contains(n));
        }
        for name in &unsub {
            let named = state.names.remove(*name);
            force.remove(*name);
            state.absent.remove(*name);
            if state.wildcard {
                // Still covered by the wildcard: say so by sending it, or its removal (XDS.md §2).
                if named {
                    force.insert((*name).to_owned());
                }
            } else {
                state.held.remove(*name);
            }
        }
        // After a reconnect the client says what it holds: send only what differs.
        if first {
            for (name, version) in &req.initial_resource_versions {
                if state.wants(name) {
                    state.held.insert(name.clone(), version.clone());
                    force.remove(name);
                }
            }
        }
        // Envoy finishes initialising a wildcard type only once it gets a response, even an empty one.
        let always = reply == Reply::Initial && state.wildcard;
        let type_url = req.type_url.clone();
        let out = self.respond(&type_url, snap, &force, always).into_iter().collect();
        Ok((reply, out))
    }

    /// A new snapshot: the responses it makes due, CDS → EDS → LDS → RDS, then other types.
    pub fn on_snapshot(&mut self, snap: &Snapshot) -> Vec<DeltaDiscoveryResponse> {
        let order = type_order();
        let mut due: Vec<String> = order.iter().filter(|t| self.types.contains_key(*t)).cloned().collect();
        due.extend(self.types.keys().filter(|t| !order.contains(t)).cloned());
        let none = BTreeSet::new();
        due.iter().filter_map(|t| self.respond(t, snap, &none, false)).collect()
    }

    /// The response for one type, if one is due: resources whose version the client does not
    /// hold (or that it must get again), and removals.
    fn respond(
        &mut self,
        type_url: &str,
        snap: &Snapshot,
        force: &BTreeSet<String>,
        always: bool,
    ) -> Option<DeltaDiscoveryResponse> {
        let empty = BTreeMap::new();
        let all = snap.types.get(type_url).unwrap_or(&empty);
        let st = self.types.get_mut(type_url)?;
        // Gone: what the client holds that no longer exists, and names asked for that do not
        // exist (once, unless asked for again).
        let mut removed: BTreeSet<String> =
            st.held.keys().filter(|n| !all.contains_key(*n)).cloned().collect();
        removed.extend(st.names.iter().filter(|n| !all.contains_key(*n) && !st.absent.contains(*n)).cloned());
        removed.extend(force.iter().filter(|n| !all.contains_key(*n)).cloned());
        for name in &removed {
            st.held.remove(name);
            if st.names.contains(name) {
                st.absent.insert(name.clone());
            }
        }
        let candidates: Vec<_> = if st.wildcard {
            all.iter().collect()
        } else {
            st.names.iter().filter_map(|n| all.get_key_value(n)).collect()
        };
        let mut resources = Vec::new();
        let mut sent = BTreeMap::new();
        for (name, (version, any)) in candidates {
            if st.rejected.get(name) == Some(version) {
                continue;
            }
            if !force.contains(name) && st.held.get(name) == Some(version) {
                continue;
            }
            let prior = st.held.insert(name.clone(), version.clone());
            st.absent.remove(name);
            sent.insert(name.clone(), (prior, version.clone()));
            resources.push(Resource {
                name: name.clone(),
                version: version.clone(),
                resource: Some(any.clone()),
                ..Default::default()
            });
        }
        if resources.is_empty() && removed.is_empty() && !always {
            return None;
        }
        self.nonce += 1;
        let nonce = self.nonce.to_string();
        let version = st.version();
        st.pending.push_back(Pending { nonce: nonce.clone(), version: version.clone(), sent });
        if st.pending.len() > MAX_PENDING {
            st.pending.pop_front();
        }
        st.sent_nonce = Some(nonce.clone());
        st.responses += 1;
        Some(DeltaDiscoveryResponse {
            system_version_info: version,
            resources,
            type_url: type_url.to_owned(),
            removed_resources: removed.into_iter().collect(),
            nonce,
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use envoy_types::pb::envoy::config::core::v3::Node;
    use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
    use envoy_types::pb::google::protobuf::Any;
    use envoy_types::pb::google::rpc::Status;
    use prost::Name;

    use super::*;

    fn any(name: &str, v: &str) -> (String, Any) {
        (v.to_owned(), Any { type_url: "x".into(), value: format!("{name}@{v}").into_bytes() })
    }

    fn put(s: &mut Snapshot, type_url: String, items: &[(&str, &str)]) {
        s.types.insert(type_url, items.iter().map(|(n, v)| ((*n).to_owned(), any(n, v))).collect());
    }

    fn snap(clusters: &[(&str, &str)], routes: &[(&str, &str)]) -> Snapshot {
        let mut s = Snapshot::default();
        put(&mut s, Cluster::type_url(), clusters);
        put(&mut s, RouteConfiguration::type_url(), routes);
        s
    }

    fn req(type_url: &str, sub: &[&str], unsub: &[&str], nonce: &str) -> DeltaDiscoveryRequest {
        DeltaDiscoveryRequest {
            type_url: type_url.to_owned(),
            resource_names_subscribe: sub.iter().map(|s| (*s).to_owned()).collect(),
            resource_names_unsubscribe: unsub.iter().map(|s| (*s).to_owned()).collect(),
            response_nonce: nonce.into(),
            node: Some(Node { id: "n1".into(), ..Default::default() }),
            ..Default::default()
        }
    }

    fn ack(r: &DeltaDiscoveryResponse) -> DeltaDiscoveryRequest {
        let mut a = req(&r.type_url, &[], &[], &r.nonce);
        a.node = None;
        a
    }

    fn nack(r: &DeltaDiscoveryResponse, message: &str) -> DeltaDiscoveryRequest {
        let mut n = ack(r);
        n.error_detail = Some(Status { code: 3, message: message.into(), ..Default::default() });
        n
    }

    /// (name, version) of each resource sent.
    fn sent(r: &DeltaDiscoveryResponse) -> Vec<(&str, &str)> {
        r.resources.iter().map(|x| (x.name.as_str(), x.version.as_str())).collect()
    }

    fn removed(r: &DeltaDiscoveryResponse) -> Vec<&str> {
        r.removed_resources.iter().map(String::as_str).collect()
    }

    #[test]
    fn subscribe_then_ack() {
        let rds = RouteConfiguration::type_url();
        let mut s = Stream::default();
        let s1 = snap(&[], &[("r1", "1"), ("r2", "1")]);
        let (reply, out) = s.on_request(&req(&rds, &["r1"], &[], ""), &s1).unwrap();
        assert_eq!(reply, Reply::Initial);
        assert_eq!(out.len(), 1);
        assert_eq!(sent(&out[0]), [("r1", "1")], "only the name asked for");
        assert!(out[0].removed_resources.is_empty());
        assert_eq!(out[0].type_url, rds);
        let r = &out[0];
        let payload = r.resources[0].resource.as_ref().unwrap();
        assert_eq!(payload.value, b"r1@1");
        assert!(!r.nonce.is_empty() && !r.system_version_info.is_empty());
        assert!(!s.types[&rds].acked());
        let (reply, more) = s.on_request(&ack(r), &s1).unwrap();
        assert_eq!(reply, Reply::Ack { nonce: r.nonce.clone() });
        assert!(more.is_empty(), "an ACK of the current content needs no reply");
        let t = &s.types[&rds];
        assert!(t.acked());
        assert_eq!((t.sent_nonce.as_deref(), t.acked_nonce.as_deref()), (Some(&*r.nonce), Some(&*r.nonce)));
        assert_eq!(t.responses, 1);
        assert_eq!(t.held(), &BTreeMap::from([("r1".to_owned(), "1".to_owned())]));
        assert_eq!(t.version(), r.system_version_info);
        // Subscribing to a name the client already holds sends it again, with a fresh nonce.
        let (reply, again) = s.on_request(&req(&rds, &["r1"], &[], ""), &s1).unwrap();
        assert_eq!(reply, Reply::Spontaneous);
        assert_eq!(sent(&again[0]), [("r1", "1")]);
        assert_ne!(again[0].nonce, r.nonce);
        assert!(!s.types[&rds].acked(), "the new response is not answered yet");
    }

    #[test]
    fn a_push_carries_only_the_resources_that_changed() {
        let cds = Cluster::type_url();
        let mut s = Stream::default();
        let s1 = snap(&[("a", "1"), ("b", "1")], &[]);
        let out = s.on_request(&req(&cds, &["*"], &[], ""), &s1).unwrap().1;
        assert_eq!(sent(&out[0]), [("a", "1"), ("b", "1")]);
        s.on_request(&ack(&out[0]), &s1).unwrap();
        assert!(s.on_snapshot(&s1).is_empty(), "same snapshot, nothing to send");
        let before = s.types[&cds].version();
        let s2 = snap(&[("a", "2"), ("b", "1"), ("c", "1")], &[]);
        let out = s.on_snapshot(&s2);
        assert_eq!(out.len(), 1);
        assert_eq!(sent(&out[0]), [("a", "2"), ("c", "1")], "b did not change");
        assert!(out[0].removed_resources.is_empty());
        assert_ne!(s.types[&cds].version(), before);
        assert!(s.on_snapshot(&s2).is_empty(), "sent once");
    }

    #[test]
    fn a_removed_resource_goes_to_removed_resources() {
        let cds = Cluster::type_url();
        let rds = RouteConfiguration::type_url();
        let mut s = Stream::default();
        let s1 = snap(&[("a", "1"), ("b", "1")], &[("r1", "1")]);
        s.on_request(&req(&cds, &["*"], &[], ""), &s1).unwrap();
        // A subscribed name that does not exist is reported as removed, once.
        let out = s.on_request(&req(&rds, &["r1", "nope"], &[], ""), &s1).unwrap().1;
        assert_eq!(sent(&out[0]), [("r1", "1")]);
        assert_eq!(removed(&out[0]), ["nope"]);
        let s2 = snap(&[("a", "1")], &[("r1", "1")]);
        let out = s.on_snapshot(&s2);
        assert_eq!(out.len(), 1, "only CDS lost something");
        assert_eq!(out[0].type_url, cds);
        assert!(out[0].resources.is_empty());
        assert_eq!(removed(&out[0]), ["b"]);
        assert!(!s.types[&cds].held().contains_key("b"));
        assert!(s.on_snapshot(&s2).is_empty(), "a removal is said once");
        // The missing name appears: it is sent; it goes away: it is removed.
        let s3 = snap(&[("a", "1")], &[("r1", "1"), ("nope", "1")]);
        assert_eq!(sent(&s.on_snapshot(&s3)[0]), [("nope", "1")]);
        let out = s.on_snapshot(&s2);
        assert_eq!((out[0].type_url.as_str(), removed(&out[0])), (rds.as_str(), vec!["nope"]));
    }

    #[test]
    fn an_ack_of_a_missing_name_gets_no_reply_for_every_type() {
        let mut s1 = Snapshot::default();
        for t in type_order() {
            put(&mut s1, t, &[("here", "1")]);
        }
        for t in type_order() {
            for names in [&["nope"][..], &["here"], &["here", "nope"]] {
                let mut s = Stream::default();
                let (_, out) = s.on_request(&req(&t, names, &[], ""), &s1).unwrap();
                assert_eq!(out.len(), 1, "{t} {names:?}");
                let mut last = out[0].clone();
                for _ in 0..50 {
                    let (_, out) = s.on_request(&ack(&last), &s1).unwrap();
                    assert!(out.is_empty(), "{t} {names:?}: an ACK needs no reply");
                    if let Some(r) = out.last() {
                        last = r.clone();
                    }
                }
                assert!(s.on_snapshot(&s1).is_empty(), "{t} {names:?}");
            }
        }
    }

    #[test]
    fn unsubscribe_needs_no_reply_and_stops_pushes() {
        let rds = RouteConfiguration::type_url();
        let mut s = Stream::default();
        let s1 = snap(&[], &[("r1", "1"), ("r2", "1")]);
        let out = s.on_request(&req(&rds, &["r1", "r2"], &[], ""), &s1).unwrap().1;
        assert_eq!(sent(&out[0]).len(), 2);
        s.on_request(&ack(&out[0]), &s1).unwrap();
        let (_, out) = s.on_request(&req(&rds, &[], &["r2"], ""), &s1).unwrap();
        assert!(out.is_empty(), "an unsubscribe needs no reply");
        assert!(!s.types[&rds].names.contains("r2"));
        assert!(!s.types[&rds].held().contains_key("r2"));
        let out = s.on_snapshot(&snap(&[], &[("r1", "2"), ("r2", "2")]));
        assert_eq!(sent(&out[0]), [("r1", "2")], "r2 is no longer wanted");
        // Removing an unsubscribed name says nothing either.
        assert!(s.on_snapshot(&snap(&[], &[("r1", "2")])).is_empty());
    }

    #[test]
    fn dropping_a_name_also_covered_by_the_wildcard_gets_a_reply() {
        let cds = Cluster::type_url();
        let mut s = Stream::default();
        let s1 = snap(&[("a", "1"), ("b", "1")], &[]);
        let out = s.on_request(&req(&cds, &["*", "a", "gone"], &[], ""), &s1).unwrap().1;
        assert_eq!(sent(&out[0]), [("a", "1"), ("b", "1")]);
        assert_eq!(removed(&out[0]), ["gone"]);
        s.on_request(&ack(&out[0]), &s1).unwrap();
        // XDS.md §2: a client holding `*` and X that drops X hears about X again.
        let (_, out) = s.on_request(&req(&cds, &[], &["a", "gone"], ""), &s1).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(sent(&out[0]), [("a", "1")], "a is still covered by the wildcard");
        assert_eq!(removed(&out[0]), ["gone"]);
        // A name that was never named explicitly gets no such reply.
        let (_, out) = s.on_request(&req(&cds, &[], &["b"], ""), &s1).unwrap();
        assert!(out.is_empty());
    }

    #[test]
    fn wildcard_by_star_and_by_a_legacy_empty_first_request() {
        let cds = Cluster::type_url();
        let s1 = snap(&[("a", "1"), ("b", "1")], &[]);
        // Legacy: a first request with both lists empty.
        let mut legacy = Stream::default();
        let out = legacy.on_request(&req(&cds, &[], &[], ""), &s1).unwrap().1;
        assert!(legacy.types[&cds].wildcard);
        assert_eq!(sent(&out[0]).len(), 2);
        // An empty request later changes nothing (unlike SotW).
        legacy.on_request(&ack(&out[0]), &s1).unwrap();
        let (reply, out) = legacy.on_request(&req(&cds, &[], &[], ""), &s1).unwrap();
        assert_eq!((reply, out.len()), (Reply::Spontaneous, 0));
        assert!(legacy.types[&cds].wildcard);
        // A wildcard with nothing in it still gets an answer to its first request.
        let mut bare = Stream::default();
        let out = bare.on_request(&req(&cds, &[], &[], ""), &Snapshot::default()).unwrap().1;
        assert_eq!(out.len(), 1);
        assert!(out[0].resources.is_empty() && out[0].removed_resources.is_empty());
        // A first request naming something is not a wildcard...
        let mut s = Stream::default();
        let out = s.on_request(&req(&cds, &["a"], &[], ""), &s1).unwrap().1;
        assert!(!s.types[&cds].wildcard);
        assert_eq!(sent(&out[0]), [("a", "1")]);
        // ...until it subscribes to "*": then it gets the rest, and new names as they appear.
        let out = s.on_request(&req(&cds, &["*"], &[], &out[0].nonce), &s1).unwrap().1;
        assert_eq!(sent(&out[0]), [("b", "1")], "a is held already");
        let s2 = snap(&[("a", "1"), ("b", "1"), ("c", "1")], &[]);
        assert_eq!(sent(&s.on_snapshot(&s2)[0]), [("c", "1")]);
        // "*" in unsubscribe ends it: only the named resource is kept and followed.
        let (_, out) = s.on_request(&req(&cds, &[], &["*"], ""), &s2).unwrap();
        assert!(out.is_empty());
        assert!(!s.types[&cds].wildcard);
        assert_eq!(s.types[&cds].held().keys().collect::<Vec<_>>(), ["a"]);
        let out = s.on_snapshot(&snap(&[("a", "2"), ("b", "2"), ("d", "1")], &[]));
        assert_eq!(sent(&out[0]), [("a", "2")]);
    }

    #[test]
    fn after_a_reconnect_only_what_differs_from_initial_resource_versions_is_sent() {
        let cds = Cluster::type_url();
        let s1 = snap(&[("a", "1"), ("b", "2"), ("c", "1")], &[]);
        let mut s = Stream::default();
        let mut first = req(&cds, &[], &[], "");
        first.initial_resource_versions =
            [("a", "1"), ("b", "1"), ("gone", "1")].into_iter().map(|(n, v)| (n.into(), v.into())).collect();
        let (reply, out) = s.on_request(&first, &s1).unwrap();
        assert_eq!(reply, Reply::Initial);
        assert_eq!(out.len(), 1);
        assert_eq!(sent(&out[0]), [("b", "2"), ("c", "1")], "a is unchanged");
        assert_eq!(removed(&out[0]), ["gone"]);
        // Named subscriptions: the client names again what it wants, and still gets only the change.
        let rds = RouteConfiguration::type_url();
        let s2 = snap(&[], &[("r1", "1"), ("r2", "2")]);
        let mut first = req(&rds, &["r1", "r2", "r3"], &[], "");
        first.initial_resource_versions =
            [("r1", "1"), ("r2", "1"), ("r3", "1")].into_iter().map(|(n, v)| (n.into(), v.into())).collect();
        let out = s.on_request(&first, &s2).unwrap().1;
        assert_eq!(sent(&out[0]), [("r2", "2")]);
        assert_eq!(removed(&out[0]), ["r3"]);
    }

    #[test]
    fn a_nack_is_recorded_and_not_resent_until_content_changes() {
        let cds = Cluster::type_url();
        let mut s = Stream::default();
        let s1 = snap(&[("a", "1"), ("b", "1")], &[]);
        let out = s.on_request(&req(&cds, &["*"], &[], ""), &s1).unwrap().1;
        s.on_request(&ack(&out[0]), &s1).unwrap();
        let good = s.types[&cds].version();
        let s2 = snap(&[("a", "bad"), ("b", "1")], &[]);
        let out = s.on_snapshot(&s2);
        assert_eq!(sent(&out[0]), [("a", "bad")]);
        let (reply, resend) = s.on_request(&nack(&out[0], "bad cluster"), &s2).unwrap();
        let want = Nack {
            nonce: out[0].nonce.clone(),
            version: out[0].system_version_info.clone(),
            error: "bad cluster".into(),
        };
        assert_eq!(
            reply,
            Reply::Nack {
                nonce: want.nonce.clone(),
                version: want.version.clone(),
                error: want.error.clone()
            }
        );
        assert!(resend.is_empty(), "never resend rejected content");
        assert!(s.on_snapshot(&s2).is_empty(), "still the rejected content: nothing to send");
        let t = &s.types[&cds];
        assert_eq!(t.nacked, Some(want));
        assert!(!t.acked());
        assert_eq!(t.version(), good, "the client is still on what it had");
        // Another change goes out without the rejected resource.
        let s3 = snap(&[("a", "bad"), ("b", "2")], &[]);
        let out = s.on_snapshot(&s3);
        assert_eq!(sent(&out[0]), [("b", "2")]);
        s.on_request(&ack(&out[0]), &s3).unwrap();
        assert_eq!(s.types[&cds].nacked, None, "an ACK clears the NACK");
        assert!(s.on_snapshot(&s3).is_empty(), "the ACK does not bring the rejected content back");
        // Fixed content goes out.
        let out = s.on_snapshot(&snap(&[("a", "3"), ("b", "2")], &[]));
        assert_eq!(sent(&out[0]), [("a", "3")]);
    }

    #[test]
    fn a_stale_nonce_still_applies_subscription_changes() {
        let rds = RouteConfiguration::type_url();
        let mut s = Stream::default();
        let s1 = snap(&[], &[("r1", "1"), ("r2", "1"), ("r3", "1")]);
        let out1 = s.on_request(&req(&rds, &["r1"], &[], ""), &s1).unwrap().1;
        let s2 = snap(&[], &[("r1", "2"), ("r2", "1"), ("r3", "1")]);
        let out2 = s.on_snapshot(&s2);
        s.on_request(&ack(&out2[0]), &s2).unwrap();
        // The first response was passed when the second was ACKed: its nonce is stale now.
        let (reply, out) = s.on_request(&req(&rds, &["r2"], &[], &out1[0].nonce), &s2).unwrap();
        assert_eq!(reply, Reply::Stale { nonce: out1[0].nonce.clone() });
        assert_eq!(sent(&out[0]), [("r2", "1")], "the subscription still counts");
        assert_eq!(s.types[&rds].acked_nonce.as_deref(), Some(out2[0].nonce.as_str()));
        // A stale request that unsubscribes still stops pushes of that name.
        let (reply, out) = s.on_request(&req(&rds, &["r3"], &["r1"], "999"), &s2).unwrap();
        assert_eq!(reply, Reply::Stale { nonce: "999".into() });
        assert_eq!(sent(&out[0]), [("r3", "1")]);
        assert!(s.on_snapshot(&snap(&[], &[("r1", "3"), ("r2", "1"), ("r3", "1")])).is_empty());
    }

    #[test]
    fn a_different_node_on_the_same_stream_is_refused() {
        let mut s = Stream::default();
        let s1 = snap(&[("a", "1")], &[]);
        s.on_request(&req(&Cluster::type_url(), &["*"], &[], ""), &s1).unwrap();
        assert_eq!(s.node(), Some("n1"));
        // Later requests may omit the node.
        let mut no_node = req(&RouteConfiguration::type_url(), &["r"], &[], "");
        no_node.node = None;
        assert!(s.on_request(&no_node, &s1).is_ok());
        let mut other = req(&RouteConfiguration::type_url(), &["r"], &[], "");
        other.node = Some(Node { id: "n2".into(), ..Default::default() });
        assert_eq!(
            s.on_request(&other, &s1).unwrap_err(),
            StreamError::NodeChanged { first: "n1".into(), now: "n2".into() }
        );
        assert_eq!(s.on_request(&req("", &["r"], &[], ""), &s1).unwrap_err(), StreamError::NoTypeUrl);
    }

    #[test]
    fn subscriptions_are_bounded_in_total() {
        let rds = RouteConfiguration::type_url();
        let mut s = Stream::default();
        let s1 = Snapshot::default();
        let half: Vec<String> = (0..MAX_NAMES / 2 + 1).map(|i| format!("a{i}")).collect();
        let other: Vec<String> = (0..MAX_NAMES / 2).map(|i| format!("b{i}")).collect();
        fn refs(v: &[String]) -> Vec<&str> {
            v.iter().map(String::as_str).collect()
        }
        assert!(s.on_request(&req(&rds, &refs(&half), &[], ""), &s1).is_ok());
        let too_many = s.on_request(&req(&rds, &refs(&other), &[], ""), &s1).unwrap_err();
        assert_eq!(too_many, StreamError::TooManyNames(MAX_NAMES + 1));
        assert_eq!(s.types[&rds].names.len(), MAX_NAMES / 2 + 1, "a refused request changes nothing");
        // Dropping one in the same request makes room.
        assert!(s.on_request(&req(&rds, &refs(&other), &["a0"], ""), &s1).is_ok());
    }

    #[test]
    fn pushes_go_out_clusters_before_routes_then_other_types() {
        let mut s = Stream::default();
        let secret = Secret::type_url();
        let mut s1 = snap(&[("a", "1")], &[("r", "1")]);
        put(&mut s1, secret.clone(), &[("s", "1")]);
        s.on_request(&req(&secret, &["s"], &[], ""), &s1).unwrap();
        s.on_request(&req(&RouteConfiguration::type_url(), &["r"], &[], ""), &s1).unwrap();
        s.on_request(&req(&Cluster::type_url(), &["a"], &[], ""), &s1).unwrap();
        let mut s2 = snap(&[("a", "2")], &[("r", "2")]);
        put(&mut s2, secret.clone(), &[("s", "2")]);
        let out = s.on_snapshot(&s2);
        let order: Vec<&str> = out.iter().map(|r| r.type_url.as_str()).collect();
        assert_eq!(order, [Cluster::type_url().as_str(), RouteConfiguration::type_url().as_str(), &secret]);
        let nonces: BTreeSet<&str> = out.iter().map(|r| r.nonce.as_str()).collect();
        assert_eq!(nonces.len(), 3, "every response has its own nonce");
    }

    #[test]
    fn the_held_version_matches_the_sotw_version_of_the_same_set() {
        use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
        let cds = Cluster::type_url();
        let s1 = snap(&[("a", "1"), ("b", "7")], &[]);
        let mut delta = Stream::default();
        let out = delta.on_request(&req(&cds, &["*"], &[], ""), &s1).unwrap().1;
        let mut sotw = crate::sotw::Stream::default();
        let first = DiscoveryRequest { type_url: cds.clone(), ..Default::default() };
        let sotw_out = sotw.on_request(&first, &s1).unwrap().1;
        assert_eq!(delta.types[&cds].version(), sotw_out[0].version_info);
        assert_eq!(out[0].system_version_info, sotw_out[0].version_info);
    }
}
