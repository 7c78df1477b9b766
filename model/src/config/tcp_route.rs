//! TCP routes: a weighted split of connections between backends.

use serde::{Deserialize, Serialize};

use super::common::{Checker, ServiceReference, TargetRef};
use super::http_route::{BackendRef, check_backends};

/// A TCP route's specification.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpRouteSpec {
    pub target_ref: TargetRef,
    pub backend_refs: Vec<BackendRef>,
}

impl TcpRouteSpec {
    pub(crate) fn check(&self, c: &mut Checker, refs: &mut Vec<ServiceReference>) {
        self.target_ref.check(c, refs);
        check_backends(c, &self.backend_refs, refs);
    }
}
