//! The application core of Trellis: one function per use case (create a mesh, put a
//! resource, rotate a CA, mint a token, invite a member, …), for every front end. Each takes
//! an authenticated [`Scope`] (or [`Request`]) and parsed inputs, checks the caller's role,
//! resolves references, writes with its audit event in one tenant transaction, and returns
//! domain results or one [`AppError`]. No HTTP, no HTML: the REST API and the console are
//! adapters over these functions.

#![forbid(unsafe_code)]

mod accounts;
mod ca;
mod caller;
mod dataplanes;
mod document;
mod error;
mod health;
mod impact;
mod members;
mod meshes;
mod observe;
mod onboarding;
mod orgs;
mod overview;
mod precondition;
mod propagation;
mod resources;
mod telemetry_status;
mod traffic_events;

pub use accounts::{
    AccountSettings, Identity, LOCAL_ISSUER, NewSession, ensure_local_admin, mint_local_login, random_secret,
};
pub use ca::{
    JOIN_TTL_DEFAULT, JOIN_TTL_MAX, JOIN_TTL_MIN, MAX_CHAIN_PEM, MAX_KEY_PEM, MintedJoinToken, NewJoinToken,
    ca_expiries,
};
pub use caller::{Caller, Credential, Principal, Request, Scope, Via, token_hash};
pub use dataplanes::{DataplaneConfig, Dataplanes, FleetCounts, SyncState, in_sync};
pub use document::{Envelope, Metadata};
pub use error::{AppError, Problem, RunAgain};
pub use health::{CallerReport, CallersView, ServiceHealth};
pub use impact::{IMPACT_WINDOW_SECS, Impact};
pub use members::{Accepted, MAX_INVITE_HOURS, NewInvite};
pub use meshes::MeshWrite;
pub use observe::{
    AccessLogPage, AccessLogSearch, DEFAULT_ACCESS_LOG_SECS, DEFAULT_WINDOW_SECS, EdgeWindow,
    MAX_ACCESS_LOG_PAGE, MAX_SERIES_POINTS, MAX_WINDOW_SECS, RuleNow, ServiceSeries, TopologySearch,
    TopologyWindow, Why, attribution_of, window_seconds,
};
pub use onboarding::{FirstProxy, Onboarding};
pub use orgs::{AuditQuery, MAX_AUDIT_FILTER, Me, NewToken};
pub use overview::{MeshOverview, OVERVIEW_LIMIT};
pub use precondition::{Condition, IfMatch};
pub use propagation::{
    NotApplied, Propagation, ProxyState, RejectionNote, WAIT_SHOWN, WaitOutcome, WaitReport, short_type,
};
pub use resources::{
    API_VERSION, Created, DEFAULT_LIMIT, Document, Effective, Idempotency, MAX_LIMIT, Page, ResourceView,
    Written, parse_selector,
};
pub use telemetry_status::{DEFAULT_STATUS_SECS, TelemetryStatus};
pub use traffic_events::{
    DEFAULT_EVENT_PAGE, DEFAULT_EVENT_SECS, DraftPolicy, EventPage, EventSearch, MAX_EVENT_PAGE,
};

use trellis_pki::Authority;
use trellis_store::Store;

/// What the use cases run against: the store and the certificate authority.
#[derive(Clone)]
pub struct Control {
    pub(crate) store: Store,
    pub(crate) authority: Authority,
    pub(crate) accounts: AccountSettings,
}

impl Control {
    /// The core over `store` and `authority`, with this installation's account settings.
    pub fn new(store: Store, authority: Authority, accounts: AccountSettings) -> Self {
        Control { store, authority, accounts }
    }
}
