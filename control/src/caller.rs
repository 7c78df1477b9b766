//! Who is calling and in which organization: a credential (an API token or a console
//! session) authenticated, the organization resolved, and the role checked against the
//! permission matrix in `model` — in this one place, for every front end.

use serde_json::Value;
use trellis_model::MeshName;
use trellis_model::{Action, OrgId, OrgSlug, Role, Token, TokenKind};
use trellis_store::{ApiToken, AuditEvent, Mesh, Org, Session, TenantTx, User};
use uuid::Uuid;

use crate::{AppError, Control};

/// SHA-256 of a token's text: what is stored and looked up.
pub use trellis_model::token_sha256 as token_hash;

/// What a request presented to say who it is, not yet checked.
#[derive(Debug, Clone)]
pub enum Credential {
    /// The text of a bearer token (`trls_pat_…`).
    ApiToken(String),
    /// The secret of a console session.
    Session(String),
    /// A bearer header that is not usable, with why.
    Malformed(&'static str),
    /// Nothing.
    None,
}

/// A request as the application core sees it: who it claims to be, and the id that ties
/// its audit events to the server's logs.
#[derive(Debug, Clone)]
pub struct Request {
    pub credential: Credential,
    pub request_id: Option<String>,
}

/// Whoever is calling, before any organization is involved.
#[derive(Debug, Clone)]
pub enum Principal {
    /// An API token: bound to one organization and a role.
    Token { org: Org, record: ApiToken },
    /// A logged-in user: the role depends on the organization.
    User { user: User, session: Session },
}

impl Principal {
    /// How the audit log names this principal.
    pub fn actor(&self) -> String {
        match self {
            Principal::Token { record, .. } => format!("token:{}", record.id),
            Principal::User { user, .. } => format!("user:{}", user.id),
        }
    }
}

/// An authenticated caller acting within one organization.
#[derive(Debug, Clone)]
pub struct Caller {
    pub org: Org,
    pub role: Role,
    pub via: Via,
    /// How the audit log names the caller: `token:<id>` or `user:<id>`.
    pub actor: String,
    /// The request's id, recorded with its audit events.
    pub request_id: Option<String>,
}

/// How the caller authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// An API token, by id.
    Token(Uuid),
    /// A console session of this user.
    Session { user: Uuid },
}

impl Caller {
    /// Refuses an action the caller's role does not allow (403).
    pub fn require(&self, action: Action) -> Result<(), AppError> {
        if self.role.allows(action) {
            Ok(())
        } else {
            Err(AppError::forbidden(format!("the role {} may not {}", self.role, describe(action))))
        }
    }
}

/// An authenticated caller and an open transaction of its organization: what every use case
/// within an organization starts from. Dropping it without [`Scope::commit`] rolls back.
pub struct Scope {
    pub caller: Caller,
    pub(crate) tx: TenantTx,
}

impl Scope {
    /// Checks that the caller may do `action` (403 otherwise) and hands back the scope.
    pub(crate) fn allow(self, action: Action) -> Result<Scope, AppError> {
        self.caller.require(action)?;
        Ok(self)
    }

    /// The mesh `name` of this organization (404 when there is none, or the name cannot be one).
    pub(crate) async fn mesh(&mut self, name: &str) -> Result<Mesh, AppError> {
        let n = MeshName::parse(name).map_err(|_| mesh_not_found(name))?;
        self.tx.mesh_by_name(&n).await?.ok_or_else(|| mesh_not_found(name))
    }

    /// Records an audit event by this caller, in this transaction.
    pub(crate) async fn audit(
        &mut self,
        action: impl Into<String>,
        target: String,
        details: Value,
    ) -> Result<(), AppError> {
        self.tx
            .record_audit(&AuditEvent {
                actor: self.caller.actor.clone(),
                action: action.into(),
                target,
                request_id: self.caller.request_id.clone(),
                details,
            })
            .await?;
        Ok(())
    }

    /// Makes the use case's writes durable.
    pub(crate) async fn commit(self) -> Result<Caller, AppError> {
        self.tx.commit().await?;
        Ok(self.caller)
    }
}

impl Control {
    /// Authenticates a request: a token, or else a session.
    pub async fn authenticate(&self, request: &Request) -> Result<Principal, AppError> {
        match &request.credential {
            Credential::ApiToken(text) => {
                let (tx, org, record) = self.open_token(text).await?;
                tx.commit().await?;
                Ok(Principal::Token { org, record })
            }
            Credential::Session(secret) => {
                let (user, session) = self.session(secret).await?;
                Ok(Principal::User { user, session })
            }
            Credential::Malformed(_) | Credential::None => Err(refusal(&request.credential)),
        }
    }

    /// Authenticates a request and opens a transaction of the organization `org_slug` for it.
    /// Another organization (or a missing one) is a 404, exactly as if it did not exist. A
    /// token costs one pool connection and one statement (token, its organization, its
    /// revocation, read in the tenant it names), so a revoked token is refused at once on
    /// every replica. The role is checked by each use case ([`Caller::require`]).
    pub async fn open(&self, request: &Request, org_slug: &str) -> Result<Scope, AppError> {
        let not_found = || org_not_found(org_slug);
        match &request.credential {
            Credential::ApiToken(text) => {
                let (tx, org, record) = self.open_token(text).await?;
                if org.slug.as_str() != org_slug {
                    return Err(not_found());
                }
                Ok(Scope { caller: token_caller(org, &record, request), tx })
            }
            Credential::Session(secret) => {
                let (user, _) = self.session(secret).await?;
                let slug = OrgSlug::parse(org_slug).map_err(|_| not_found())?;
                let org = self.store.org_by_slug(&slug).await?.ok_or_else(not_found)?;
                let mut tx = self.store.tenant(org.id).await?;
                let role = tx.member_role(user.id).await?.ok_or_else(not_found)?;
                let caller = Caller {
                    org,
                    role,
                    via: Via::Session { user: user.id },
                    actor: format!("user:{}", user.id),
                    request_id: request.request_id.clone(),
                };
                Ok(Scope { caller, tx })
            }
            Credential::Malformed(_) | Credential::None => Err(refusal(&request.credential)),
        }
    }

    /// The token's tenant transaction, organization and record, or 401.
    async fn open_token(&self, text: &str) -> Result<(TenantTx, Org, ApiToken), AppError> {
        let token = parse_api_token(text)?;
        let mut tx = self.store.tenant(token.org).await?;
        let (record, org) = tx.authenticate_token(&token_hash(text)).await?.ok_or_else(unknown_token)?;
        Ok((tx, org, record))
    }

    /// The live session with this secret and its user, or 401.
    async fn session(&self, secret: &str) -> Result<(User, Session), AppError> {
        let ended = || AppError::unauthorized("the session has ended; log in again");
        let session =
            self.store.session(&token_hash(secret), self.accounts.session_idle).await?.ok_or_else(ended)?;
        let user = self.store.user(session.user_id).await?.ok_or_else(ended)?;
        Ok((user, session))
    }

    /// A tenant transaction of `org` outside any caller: for sign-up and invitations.
    pub(crate) async fn tenant(&self, org: OrgId) -> Result<TenantTx, AppError> {
        Ok(self.store.tenant(org).await?)
    }
}

/// The text of an API token, parsed (401 when it is not one).
pub(crate) fn parse_api_token(text: &str) -> Result<Token, AppError> {
    Token::parse(TokenKind::Pat, text).map_err(|e| {
        AppError::unauthorized(format!("the bearer token is not a valid Trellis API token: {e}"))
    })
}

/// The refusal of a token that parses but is not live.
pub(crate) fn unknown_token() -> AppError {
    AppError::unauthorized("the API token is unknown, revoked or expired")
}

/// The caller a live API token makes of a request.
pub(crate) fn token_caller(org: Org, record: &ApiToken, request: &Request) -> Caller {
    Caller {
        org,
        role: record.role,
        via: Via::Token(record.id),
        actor: format!("token:{}", record.id),
        request_id: request.request_id.clone(),
    }
}

/// Another organization and a missing one answer alike.
pub(crate) fn org_not_found(slug: &str) -> AppError {
    AppError::not_found(format!("organization {slug:?} not found"))
}

/// A missing mesh, or a name that cannot be one.
pub(crate) fn mesh_not_found(name: &str) -> AppError {
    AppError::not_found(format!("mesh {name:?} not found"))
}

/// Why a request without a usable credential is refused.
fn refusal(credential: &Credential) -> AppError {
    match credential {
        Credential::Malformed(why) => AppError::unauthorized(*why),
        _ => AppError::unauthorized(
            "log in (session cookie) or send an API token as `Authorization: Bearer trls_pat_…`",
        ),
    }
}

fn describe(action: Action) -> &'static str {
    match action {
        Action::Read => "read this organization",
        Action::WriteConfig => "change mesh configuration",
        Action::ReadAudit => "read the audit log",
        Action::ManageMembers => "manage members",
        Action::ManageTokens => "manage tokens",
        Action::ManageCa => "manage certificate authorities",
        Action::ManageOrg => "change the organization",
        Action::DeleteOrg => "delete the organization",
    }
}
