//! What every handler can reach.

use std::sync::Arc;

use axum::extract::FromRef;
use axum::http::HeaderName;
use prometheus_client::registry::Registry;
use trellis_control::Control;
use trellis_store::Store;

use crate::Accounts;

/// Header that carries the request id in and out (generated when absent).
pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// What the server hands the router.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub registry: Arc<Registry>,
    pub accounts: Arc<Accounts>,
    pub authority: trellis_pki::Authority,
    /// Where workloads reach the TLS port (xDS and identity), and the platform root they pin.
    pub xds: XdsEndpoint,
}

/// The TLS port as workloads see it: for bootstraps and agent install lines.
#[derive(Debug, Clone)]
pub struct XdsEndpoint {
    /// `host:port` that workloads dial.
    pub address: String,
    /// The platform CA's root (PEM), which workloads pin.
    pub ca_pem: String,
}

/// The router's state: the server's, and the application core over it.
#[derive(Clone)]
pub(crate) struct Shared {
    pub app: AppState,
    pub control: Control,
}

impl Shared {
    pub fn new(app: AppState) -> Self {
        let control = Control::new(app.store.clone(), app.authority.clone(), app.accounts.session_idle);
        Shared { app, control }
    }
}

impl FromRef<Shared> for AppState {
    fn from_ref(s: &Shared) -> AppState {
        s.app.clone()
    }
}

impl FromRef<Shared> for Control {
    fn from_ref(s: &Shared) -> Control {
        s.control.clone()
    }
}
