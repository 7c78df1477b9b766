//! State-of-the-world ADS, one stream at a time (XDS.md §1, §7).
//!
//! [`Stream`] holds what one client asked for and what it was sent, per type URL: the
//! subscribed names (or the wildcard), the last version and nonce sent, the version it
//! ACKed, and the version it NACKed with the reason. The server feeds it each request and
//! each new [`Snapshot`]; it answers with the responses to send, in the order
//! CDS → EDS → LDS → RDS → SDS, and never resends content the client rejected.

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::protobuf::Any;
use envoy_types::util::pack_any;
use prost::Name;

use crate::Resources;

/// The type URLs served, in the order responses go out when several are due.
pub fn type_order() -> [String; 5] {
    [
        Cluster::type_url(),
        ClusterLoadAssignment::type_url(),
        Listener::type_url(),
        RouteConfiguration::type_url(),
        Secret::type_url(),
    ]
}

/// Listeners and clusters are full state: every response carries every subscribed resource,
/// and a missing one is deleted by the client.
fn full_state(type_url: &str) -> bool {
    type_url == Listener::type_url() || type_url == Cluster::type_url()
}

/// Resources ready to send: per type URL, name → (version, packed resource).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub types: BTreeMap<String, BTreeMap<String, (String, Any)>>,
}

impl Snapshot {
    /// Packs translated resources, each versioned by its content.
    pub fn from_resources(r: &Resources) -> Snapshot {
        fn put<M: prost::Message + Name + Clone>(s: &mut Snapshot, items: &BTreeMap<String, M>) {
            let t = s.types.entry(M::type_url()).or_default();
            for (name, m) in items {
                t.insert(name.clone(), (crate::version(m), pack_any(m.clone())));
            }
        }
        let mut s = Snapshot::default();
        put(&mut s, &r.clusters);
        put(&mut s, &r.endpoints);
        put(&mut s, &r.listeners);
        put(&mut s, &r.routes);
        put(&mut s, &r.secrets);
        s
    }
}

/// Why a request ends the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamError {
    /// A later request named another node than the first one did.
    NodeChanged { first: String, now: String },
    /// A request without a type URL (required on ADS).
    NoTypeUrl,
    /// More resource names than a client may subscribe to.
    TooManyNames(usize),
}

/// Most resource names one request may carry.
pub const MAX_NAMES: usize = 10_000;

/// What the ledger knows about one type on one stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TypeState {
    /// Subscribed to everything (Envoy's LDS/CDS), until the client first names something.
    pub wildcard: bool,
    ever_named: bool,
    pub names: BTreeSet<String>,
    /// Last response sent: version, nonce, and the names it carried (what the client holds).
    pub sent_version: Option<String>,
    pub sent_nonce: Option<String>,
    pub sent_names: BTreeSet<String>,
    /// The version the client last accepted.
    pub acked_version: Option<String>,
    /// The version the client last rejected, and its reason; cleared by an ACK.
    pub nacked: Option<(String, String)>,
}

/// One ADS stream.
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
    /// The client accepted `version`.
    Ack { version: String },
    /// The client rejected the response with this nonce.
    Nack { version: String, error: String },
    /// A response to a nonce that is no longer the newest: ignored (XDS.md §1).
    Stale,
}

impl Stream {
    /// The node id bound to this stream by its first request.
    pub fn node(&self) -> Option<&str> {
        self.node.as_deref()
    }

    /// Handles one request; returns how it was classified and the responses to send.
    pub fn on_request(
        &mut self,
        req: &DiscoveryRequest,
        snap: &Snapshot,
    ) -> Result<(Reply, Vec<DiscoveryResponse>), StreamError> {
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
        if req.resource_names.len() > MAX_NAMES {
            return Err(StreamError::TooManyNames(req.resource_names.len()));
        }
        let state = self.types.entry(req.type_url.clone()).or_default();
        let reply = if req.response_nonce.is_empty() {
            Reply::Initial
        } else if state.sent_nonce.as_deref() != Some(req.response_nonce.as_str()) {
            return Ok((Reply::Stale, Vec::new()));
        } else if let Some(err) = &req.error_detail {
            let version = state.sent_version.clone().unwrap_or_default();
            state.nacked = Some((version.clone(), err.message.clone()));
            Reply::Nack { version, error: err.message.clone() }
        } else {
            state.acked_version = Some(req.version_info.clone());
            state.nacked = None;
            Reply::Ack { version: req.version_info.clone() }
        };
        // Subscriptions: an empty list is the wildcard only until something was named.
        let names: BTreeSet<String> = req.resource_names.iter().filter(|n| *n != "*").cloned().collect();
        let star = req.resource_names.iter().any(|n| n == "*");
        if names.is_empty() && !state.ever_named {
            state.wildcard = true;
        } else {
            state.wildcard = star;
            state.ever_named = true;
        }
        // A name the client did not ask for before gets an answer even if nothing changed;
        // a name it keeps asking for does not, whether or not it exists (XDS.md §1: an ACK of
        // the current version needs no reply, or a missing name would make every ACK loop).
        let grew = names.iter().any(|n| !state.names.contains(n));
        state.names = names;
        let type_url = req.type_url.clone();
        let force = reply == Reply::Initial || grew;
        let out = self.respond(&type_url, snap, force).into_iter().collect();
        Ok((reply, out))
    }

    /// A new snapshot: the responses it makes due, in CDS → EDS → LDS → RDS → SDS order.
    pub fn on_snapshot(&mut self, snap: &Snapshot) -> Vec<DiscoveryResponse> {
        let due: Vec<String> = type_order().into_iter().filter(|t| self.types.contains_key(t)).collect();
        due.iter().filter_map(|t| self.respond(t, snap, false)).collect()
    }

    /// The response for one type, if one is due.
    fn respond(&mut self, type_url: &str, snap: &Snapshot, force: bool) -> Option<DiscoveryResponse> {
        let empty = BTreeMap::new();
        let all = snap.types.get(type_url).unwrap_or(&empty);
        let state = self.types.get_mut(type_url)?;
        let chosen: Vec<(&String, &(String, Any))> = if state.wildcard {
            all.iter().collect()
        } else {
            all.iter().filter(|(n, _)| state.names.contains(*n)).collect()
        };
        // Per-type version for this client: the names and versions of what it gets.
        let mut h = String::new();
        for (name, (v, _)) in &chosen {
            h.push_str(name);
            h.push('\u{0}');
            h.push_str(v);
            h.push('\u{0}');
        }
        let version = hex::encode(&ring::digest::digest(&ring::digest::SHA256, h.as_bytes()).as_ref()[..12]);
        let unchanged = state.sent_version.as_deref() == Some(version.as_str());
        let rejected = state.nacked.as_ref().is_some_and(|(v, _)| *v == version);
        if !force && (unchanged || rejected) {
            return None;
        }
        // Per-resource types: nothing to say about names that do not exist yet.
        if chosen.is_empty() && !full_state(type_url) && !force {
            return None;
        }
        self.nonce += 1;
        let nonce = self.nonce.to_string();
        state.sent_version = Some(version.clone());
        state.sent_nonce = Some(nonce.clone());
        state.sent_names = chosen.iter().map(|(n, _)| (*n).clone()).collect();
        Some(DiscoveryResponse {
            version_info: version,
            resources: chosen.into_iter().map(|(_, (_, any))| any.clone()).collect(),
            type_url: type_url.to_owned(),
            nonce,
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::core::v3::Node;
    use envoy_types::pb::google::rpc::Status;

    use super::*;

    fn any(name: &str, v: &str) -> (String, Any) {
        (v.to_owned(), Any { type_url: "x".into(), value: format!("{name}@{v}").into_bytes() })
    }

    fn snap(clusters: &[(&str, &str)], routes: &[(&str, &str)]) -> Snapshot {
        let mut s = Snapshot::default();
        s.types.insert(
            Cluster::type_url(),
            clusters.iter().map(|(n, v)| ((*n).to_owned(), any(n, v))).collect(),
        );
        s.types.insert(
            RouteConfiguration::type_url(),
            routes.iter().map(|(n, v)| ((*n).to_owned(), any(n, v))).collect(),
        );
        s
    }

    fn req(type_url: String, names: &[&str], version: &str, nonce: &str) -> DiscoveryRequest {
        DiscoveryRequest {
            type_url,
            resource_names: names.iter().map(|s| (*s).to_owned()).collect(),
            version_info: version.into(),
            response_nonce: nonce.into(),
            node: Some(Node { id: "n1".into(), ..Default::default() }),
            ..Default::default()
        }
    }

    #[test]
    fn wildcard_cds_then_ack_then_push_on_change_only() {
        let cds = Cluster::type_url();
        let mut s = Stream::default();
        let s1 = snap(&[("a", "1"), ("b", "1")], &[]);
        let (reply, out) = s.on_request(&req(cds.clone(), &[], "", ""), &s1).unwrap();
        assert_eq!(reply, Reply::Initial);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].resources.len(), 2, "wildcard gets everything");
        let (v, n) = (out[0].version_info.clone(), out[0].nonce.clone());
        let (reply, out) = s.on_request(&req(cds.clone(), &[], &v, &n), &s1).unwrap();
        assert_eq!(reply, Reply::Ack { version: v.clone() });
        assert!(out.is_empty(), "an ACK of the current content needs no reply");
        assert!(s.on_snapshot(&s1).is_empty(), "same snapshot, nothing to send");
        let s2 = snap(&[("a", "2"), ("b", "1")], &[]);
        let out = s.on_snapshot(&s2);
        assert_eq!(out.len(), 1);
        assert_ne!(out[0].version_info, v);
        assert_eq!(out[0].resources.len(), 2, "CDS is full state");
    }

    #[test]
    fn a_nack_is_recorded_and_not_resent_until_content_changes() {
        let cds = Cluster::type_url();
        let mut s = Stream::default();
        let s1 = snap(&[("a", "1")], &[]);
        let out = s.on_request(&req(cds.clone(), &[], "", ""), &s1).unwrap().1;
        let good = out[0].version_info.clone();
        s.on_request(&req(cds.clone(), &[], &good, &out[0].nonce), &s1).unwrap();
        let s2 = snap(&[("a", "bad")], &[]);
        let out = s.on_snapshot(&s2);
        let bad = out[0].version_info.clone();
        let mut nack = req(cds.clone(), &[], &good, &out[0].nonce);
        nack.error_detail = Some(Status { code: 3, message: "bad cluster".into(), ..Default::default() });
        let (reply, resend) = s.on_request(&nack, &s2).unwrap();
        assert_eq!(reply, Reply::Nack { version: bad.clone(), error: "bad cluster".into() });
        assert!(resend.is_empty(), "never resend rejected content");
        assert!(s.on_snapshot(&s2).is_empty(), "still the rejected content: nothing to send");
        assert_eq!(s.types[&cds].nacked, Some((bad, "bad cluster".into())));
        assert_eq!(s.types[&cds].acked_version, Some(good));
        // Fixed content goes out, and its ACK clears the NACK.
        let out = s.on_snapshot(&snap(&[("a", "3")], &[]));
        assert_eq!(out.len(), 1);
        s.on_request(&req(cds.clone(), &[], &out[0].version_info, &out[0].nonce), &snap(&[("a", "3")], &[]))
            .unwrap();
        assert_eq!(s.types[&cds].nacked, None);
    }

    #[test]
    fn stale_nonces_are_ignored_and_named_subscriptions_get_only_their_names() {
        let rds = RouteConfiguration::type_url();
        let mut s = Stream::default();
        let s1 = snap(&[], &[("r1", "1"), ("r2", "1")]);
        let out = s.on_request(&req(rds.clone(), &["r1"], "", ""), &s1).unwrap().1;
        assert_eq!(out[0].resources.len(), 1);
        let first_nonce = out[0].nonce.clone();
        // A change is pushed with a new nonce; an ACK of the old nonce is stale.
        let s2 = snap(&[], &[("r1", "2"), ("r2", "1")]);
        let out2 = s.on_snapshot(&s2);
        assert_eq!(out2.len(), 1);
        let (reply, out) =
            s.on_request(&req(rds.clone(), &["r1"], &out[0].version_info, &first_nonce), &s2).unwrap();
        assert_eq!((reply, out.len()), (Reply::Stale, 0));
        // Naming another resource gets it at once, even with no content change.
        let (_, out) = s
            .on_request(&req(rds.clone(), &["r1", "r2"], &out2[0].version_info, &out2[0].nonce), &s2)
            .unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].resources.len(), 2);
        // A change to a resource nobody here subscribed to sends nothing.
        let mut s3 = s2.clone();
        s3.types.get_mut(&rds).unwrap().insert("r3".into(), any("r3", "1"));
        s.on_request(&req(rds.clone(), &["r1", "r2"], &out[0].version_info, &out[0].nonce), &s2).unwrap();
        assert!(s.on_snapshot(&s3).is_empty());
    }

    /// A client that ACKs every response, as gRPC's does: how many responses it gets for
    /// `names` while it ACKs `acks` times.
    fn responses_while_acking(
        s: &mut Stream,
        type_url: &str,
        names: &[&str],
        snap: &Snapshot,
        acks: usize,
    ) -> usize {
        let (_, mut out) = s.on_request(&req(type_url.to_owned(), names, "", ""), snap).unwrap();
        let mut count = 0;
        let mut last = None;
        for _ in 0..acks {
            count += out.len();
            if let Some(r) = out.last() {
                last = Some((r.version_info.clone(), r.nonce.clone()));
            }
            let (v, n) = last.clone().expect("the first request is answered");
            out = s.on_request(&req(type_url.to_owned(), names, &v, &n), snap).unwrap().1;
        }
        count + out.len()
    }

    fn every_type(names: &[&str]) -> Snapshot {
        let mut s = Snapshot::default();
        for t in type_order() {
            s.types.insert(t, names.iter().map(|n| ((*n).to_owned(), any(n, "1"))).collect());
        }
        s
    }

    #[test]
    fn an_ack_of_a_missing_name_gets_no_reply_for_every_type() {
        let s1 = every_type(&["here"]);
        for t in type_order() {
            for names in [&["nope"][..], &["here"], &["here", "nope"]] {
                let mut s = Stream::default();
                assert_eq!(responses_while_acking(&mut s, &t, names, &s1, 50), 1, "{t} {names:?}");
            }
            // The missing name is answered once, without it; it appears: pushed once.
            let mut s = Stream::default();
            let (_, out) = s.on_request(&req(t.clone(), &["nope"], "", ""), &s1).unwrap();
            assert!(out[0].resources.is_empty(), "{t}");
            s.on_request(&req(t.clone(), &["nope"], &out[0].version_info, &out[0].nonce), &s1).unwrap();
            let s2 = every_type(&["here", "nope"]);
            let out = s.on_snapshot(&s2);
            assert_eq!(out.len(), 1, "{t}");
            assert_eq!(out[0].resources.len(), 1, "{t}");
            let (_, again) =
                s.on_request(&req(t.clone(), &["nope"], &out[0].version_info, &out[0].nonce), &s2).unwrap();
            assert!(again.is_empty(), "{t}");
            assert!(s.on_snapshot(&s2).is_empty(), "{t}");
        }
    }

    #[test]
    fn naming_another_missing_name_is_answered_once() {
        let rds = RouteConfiguration::type_url();
        let s1 = every_type(&["here"]);
        let mut s = Stream::default();
        let (_, out) = s.on_request(&req(rds.clone(), &["here"], "", ""), &s1).unwrap();
        let (v, n) = (out[0].version_info.clone(), out[0].nonce.clone());
        let (_, out) = s.on_request(&req(rds.clone(), &["here", "nope"], &v, &n), &s1).unwrap();
        assert_eq!(out.len(), 1, "a new name is answered even when nothing changed");
        let (v, n) = (out[0].version_info.clone(), out[0].nonce.clone());
        for _ in 0..10 {
            let (_, out) = s.on_request(&req(rds.clone(), &["here", "nope"], &v, &n), &s1).unwrap();
            assert!(out.is_empty(), "the same names again need no reply");
        }
        // Dropping a name that does not exist changes nothing the client holds.
        let (_, out) = s.on_request(&req(rds.clone(), &["here"], &v, &n), &s1).unwrap();
        assert!(out.is_empty());
    }

    #[test]
    fn a_different_node_on_the_same_stream_is_refused() {
        let mut s = Stream::default();
        let s1 = snap(&[("a", "1")], &[]);
        s.on_request(&req(Cluster::type_url(), &[], "", ""), &s1).unwrap();
        // Later requests may omit the node.
        let mut no_node = req(RouteConfiguration::type_url(), &["r"], "", "");
        no_node.node = None;
        assert!(s.on_request(&no_node, &s1).is_ok());
        let mut other = req(RouteConfiguration::type_url(), &["r"], "", "");
        other.node = Some(Node { id: "n2".into(), ..Default::default() });
        assert_eq!(
            s.on_request(&other, &s1).unwrap_err(),
            StreamError::NodeChanged { first: "n1".into(), now: "n2".into() }
        );
    }

    #[test]
    fn pushes_go_out_clusters_before_routes() {
        let mut s = Stream::default();
        let s1 = snap(&[("a", "1")], &[("r", "1")]);
        s.on_request(&req(RouteConfiguration::type_url(), &["r"], "", ""), &s1).unwrap();
        s.on_request(&req(Cluster::type_url(), &["a"], "", ""), &s1).unwrap();
        let out = s.on_snapshot(&snap(&[("a", "2")], &[("r", "2")]));
        let order: Vec<&str> = out.iter().map(|r| r.type_url.as_str()).collect();
        assert_eq!(order, [Cluster::type_url().as_str(), RouteConfiguration::type_url().as_str()]);
        // Once named, an empty CDS list unsubscribes everything (it is no longer the wildcard).
        let v = out[0].version_info.clone();
        let (_, resp) = s.on_request(&req(Cluster::type_url(), &[], &v, &out[0].nonce), &s1).unwrap();
        assert_eq!(resp.len(), 1);
        assert!(resp[0].resources.is_empty());
    }
}
