//! The workload identity service: CSR → X.509-SVID, by join token or by renewal over mTLS.

use std::time::UNIX_EPOCH;

use tonic::{Request, Response, Status};
use trellis_pki::{Authority, Issued, PkiError};

use crate::proto::identity_server::Identity;
use crate::proto::{IssueSvidRequest, IssueSvidResponse};
use crate::tls::PeerInfo;

/// Largest CSR accepted on the wire (the `ca` crate bounds it again).
const MAX_CSR: usize = trellis_ca::MAX_CSR_INPUT;

pub struct IdentityService {
    authority: Authority,
}

impl IdentityService {
    pub fn new(authority: Authority) -> Self {
        Self { authority }
    }
}

/// Maps the authority's errors to gRPC statuses; internal details are logged, not returned.
pub(crate) fn status(e: PkiError) -> Status {
    match e {
        PkiError::Unauthenticated(why) => {
            tracing::info!(reason = %why, "identity refused");
            Status::unauthenticated("credential refused")
        }
        PkiError::Invalid { field, message } => Status::invalid_argument(format!("{field}: {message}")),
        PkiError::NotFound(what) => Status::not_found(format!("{what} not found")),
        PkiError::Conflict(m) => Status::failed_precondition(m),
        PkiError::Store(e) if e.is_transient() => {
            tracing::warn!(error = %e, "identity service: the database is unavailable or busy");
            Status::unavailable("the database is unavailable or busy; retry")
        }
        e => {
            tracing::error!(error = %e, "identity service failed");
            Status::internal("internal error")
        }
    }
}

fn response(i: Issued) -> IssueSvidResponse {
    IssueSvidResponse {
        spiffe_id: i.svid.spiffe_id.as_str().to_owned(),
        certificate_chain_pem: i.svid.chain_pem,
        trust_bundle_pem: i.bundle_pem,
        trust_bundle_sequence: i.bundle_sequence,
        expires_at: i.svid.not_after.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64),
        serial: i.svid.serial_hex,
    }
}

#[tonic::async_trait]
impl Identity for IdentityService {
    async fn issue_svid(
        &self,
        request: Request<IssueSvidRequest>,
    ) -> Result<Response<IssueSvidResponse>, Status> {
        let from_header = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(|t| t.trim().to_owned());
        let peer = request.extensions().get::<PeerInfo>().cloned();
        let req = request.into_inner();
        if req.csr.len() > MAX_CSR {
            return Err(Status::invalid_argument(format!("csr: at most {MAX_CSR} bytes are accepted")));
        }
        let token = Some(req.join_token).filter(|t| !t.is_empty()).or(from_header);
        let issued = match (token, peer.and_then(|p| p.certs)) {
            (Some(token), _) => self.authority.issue_with_join_token(&token, &req.csr).await,
            (None, Some(chain)) => match self.authority.authenticate_peer(&chain).await {
                Ok(peer) => self.authority.renew(&peer, &req.csr).await,
                Err(e) => Err(e),
            },
            (None, None) => {
                return Err(Status::unauthenticated(
                    "present a join token, or your current SVID as the TLS client certificate",
                ));
            }
        }
        .map_err(status)?;
        Ok(Response::new(response(issued)))
    }
}
