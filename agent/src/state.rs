//! The configuration the agent applies: converted resources by type and name, swapped whole
//! (readers never see half an update), and the xDS versions they came with.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use envoy_types::pb::envoy::config::cluster::v3::Cluster as PbCluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener as PbListener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use envoy_types::pb::envoy::service::discovery::v3::Resource;
use prost::Name;
use trellis_ca::TrustBundle;

use crate::config::{Cluster, Listener, RouteTable};
use crate::convert::{Converted, Local, convert};

/// One consistent view of everything applied.
#[derive(Debug, Default, Clone)]
pub struct Config {
    pub listeners: BTreeMap<String, Arc<Listener>>,
    pub routes: BTreeMap<String, Arc<RouteTable>>,
    pub clusters: BTreeMap<String, Arc<Cluster>>,
    pub endpoints: BTreeMap<String, Arc<Vec<SocketAddr>>>,
    /// The mesh's roots from SDS, once received.
    pub bundle: Option<Arc<TrustBundle>>,
    /// Types of which a response was applied.
    pub applied: std::collections::BTreeSet<String>,
    /// type URL → name → version.
    pub versions: BTreeMap<String, BTreeMap<String, String>>,
    /// type URL → name → the resource as received, for the copy kept on disk.
    pub raw: BTreeMap<String, BTreeMap<String, Resource>>,
}

/// Where applied configuration lives; `changed` ticks after each swap.
pub struct State {
    pub local: Local,
    current: ArcSwap<Config>,
    pub changed: tokio::sync::watch::Sender<u64>,
}

/// What the xDS client needs from whoever applies configuration.
pub trait ConfigSink: Send + Sync + 'static {
    /// What is held of `type_url`: name → version (sent again after a reconnect).
    fn held(&self, type_url: &str) -> HashMap<String, String>;
    /// Applies one response whole, or refuses it whole with the reason.
    fn apply(&self, type_url: &str, updated: &[Resource], removed: &[String]) -> Result<(), String>;
}

/// Types in the order the agent subscribes to them.
pub fn type_urls() -> [String; 5] {
    [
        PbCluster::type_url(),
        ClusterLoadAssignment::type_url(),
        PbListener::type_url(),
        RouteConfiguration::type_url(),
        Secret::type_url(),
    ]
}

/// Most resources of one type the agent holds, a bound on what a server can make it keep.
const MAX_RESOURCES: usize = 10_000;

impl State {
    pub fn new(local: Local) -> State {
        State {
            local,
            current: ArcSwap::from_pointee(Config::default()),
            changed: tokio::sync::watch::channel(0).0,
        }
    }

    pub fn config(&self) -> Arc<Config> {
        self.current.load_full()
    }

    /// The new config with `updated` and `removed` applied, or every conversion error.
    pub fn next(&self, type_url: &str, updated: &[Resource], removed: &[String]) -> Result<Config, String> {
        let mut next = (*self.config()).clone();
        let mut errors = Vec::new();
        let versions = next.versions.entry(type_url.to_owned()).or_default();
        let raw = next.raw.entry(type_url.to_owned()).or_default();
        for r in updated {
            let Some(any) = &r.resource else {
                errors.push(format!("{}: no resource", r.name));
                continue;
            };
            match convert(type_url, any, &self.local) {
                Ok(c) => {
                    versions.insert(r.name.clone(), r.version.clone());
                    raw.insert(r.name.clone(), r.clone());
                    let name = r.name.clone();
                    match c {
                        Converted::Listener(l) => drop(next.listeners.insert(name, l)),
                        Converted::Routes(t) => drop(next.routes.insert(name, t)),
                        Converted::Cluster(c) => drop(next.clusters.insert(name, c)),
                        Converted::Endpoints(e) => drop(next.endpoints.insert(name, e)),
                        Converted::Secret(Some(b)) => next.bundle = Some(b),
                        Converted::Secret(None) => {}
                    }
                }
                Err(e) => errors.push(e),
            }
        }
        if !errors.is_empty() {
            return Err(errors.join("; "));
        }
        for name in removed {
            versions.remove(name);
            raw.remove(name);
            if type_url == PbListener::type_url() {
                next.listeners.remove(name);
            } else if type_url == RouteConfiguration::type_url() {
                next.routes.remove(name);
            } else if type_url == PbCluster::type_url() {
                next.clusters.remove(name);
            } else if type_url == ClusterLoadAssignment::type_url() {
                next.endpoints.remove(name);
            }
        }
        if versions.len() > MAX_RESOURCES {
            return Err(format!("more than {MAX_RESOURCES} resources of {type_url}"));
        }
        next.applied.insert(type_url.to_owned());
        Ok(next)
    }

    pub fn store(&self, next: Config) {
        self.current.store(Arc::new(next));
        self.changed.send_modify(|n| *n += 1);
    }
}
