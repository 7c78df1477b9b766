//! What every handler can reach.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::FromRef;
use axum::http::HeaderName;
use prometheus_client::registry::Registry;
use trellis_control::{AccountSettings, Control};
use trellis_store::Store;

use trellis_model::OrgSlug;
use url::Url;

use crate::oidc::OidcProvider;

/// Header that carries the request id in and out (generated when absent).
pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Everything the account routes need to know about this installation.
pub struct Accounts {
    /// Where browsers reach Trellis; the OIDC redirect URI and links are built from it.
    pub public_url: Url,
    /// The OpenID provider; `None` is the no-IdP mode (one-time local login links).
    pub oidc: Option<OidcProvider>,
    /// A session ends after this long without a request …
    pub session_idle: Duration,
    /// … and this long after login, whatever happens.
    pub session_lifetime: Duration,
    /// No-IdP mode: the slug of the organization the local admin's first login creates.
    pub local_org: OrgSlug,
}

impl Accounts {
    /// `<public_url><path>`.
    pub fn link(&self, path: &str) -> String {
        format!("{}{path}", self.public_url.as_str().trim_end_matches('/'))
    }
}

/// What the server hands the router.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub registry: Arc<Registry>,
    pub accounts: Arc<Accounts>,
    pub authority: trellis_pki::Authority,
    /// Where workloads reach the TLS port (xDS and identity), and the platform root they pin
    /// (shared: the state is cloned for every request).
    pub xds: Arc<XdsEndpoint>,
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

impl AppState {
    /// The application core over this state's store, authority and account settings.
    pub fn control(&self) -> Control {
        let settings = AccountSettings {
            session_idle: self.accounts.session_idle,
            session_lifetime: self.accounts.session_lifetime,
            local_org: self.accounts.local_org.clone(),
        };
        Control::new(self.store.clone(), self.authority.clone(), settings)
    }
}

impl Shared {
    pub fn new(app: AppState) -> Self {
        let control = app.control();
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
