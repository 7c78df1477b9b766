//! Members and invitations of an organization, and accepting an invitation.

use chrono::{Duration, Utc};
use rand::RngCore;
use serde::Deserialize;
use serde_json::json;
use trellis_model::{Action, Role, SECRET_LEN, Token, TokenKind};
use trellis_store::{AuditEvent, Invite, Member, Org, StoreError};
use uuid::Uuid;

use crate::caller::token_hash;
use crate::{AppError, Caller, Control, Principal, Request, Scope};

/// Longest an invitation may stay valid, in hours (30 days); the default is 7 days.
pub const MAX_INVITE_HOURS: i64 = 720;
const DEFAULT_INVITE_HOURS: i64 = 168;

/// An invitation to send.
#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewInvite {
    #[cfg_attr(feature = "openapi", schema(min_length = 3, max_length = 320))]
    pub email: String,
    pub role: Role,
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(schema_with = invite_hours))]
    pub expires_in_hours: Option<i64>,
}

#[cfg(feature = "openapi")]
fn invite_hours() -> utoipa::openapi::schema::ObjectBuilder {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    ObjectBuilder::new().schema_type(Type::Integer).minimum(Some(1)).maximum(Some(MAX_INVITE_HOURS))
}

/// An accepted invitation: the organization joined, with the role.
pub struct Accepted {
    pub org: Org,
    pub role: Role,
}

fn parse_user(user: &str) -> Result<Uuid, AppError> {
    user.parse().map_err(|_| AppError::not_found("member not found"))
}

/// A caller may not act on a member more powerful than itself, nor hand out a role more
/// powerful than its own (roles order from owner down to viewer).
fn check_rank(caller: &Caller, target: Role, granted: Option<Role>) -> Result<(), AppError> {
    if target < caller.role {
        return Err(AppError::forbidden(format!("a {} may not change or remove an {}", caller.role, target)));
    }
    if let Some(g) = granted
        && g < caller.role
    {
        return Err(AppError::forbidden(format!("a {} may not grant the role {g}", caller.role)));
    }
    Ok(())
}

fn last_owner(e: StoreError) -> AppError {
    match e {
        StoreError::LastOwner => {
            AppError::conflict("the organization must keep at least one owner: make someone else owner first")
        }
        other => other.into(),
    }
}

fn valid_email(e: &str) -> bool {
    let Some((local, domain)) = e.split_once('@') else { return false };
    (3..=320).contains(&e.len())
        && !local.is_empty()
        && !domain.is_empty()
        && !domain.contains('@')
        && !e.chars().any(|c| c.is_whitespace() || c.is_control())
}

impl Control {
    /// The organization's members.
    pub async fn list_members(&self, scope: Scope) -> Result<Vec<Member>, AppError> {
        let mut scope = scope.allow(Action::Read)?;
        let members = scope.tx.members().await?;
        scope.commit().await?;
        Ok(members)
    }

    /// Changes a member's role (never above the caller's, never the last owner's away).
    pub async fn update_member(&self, scope: Scope, user: &str, role: Role) -> Result<Member, AppError> {
        let mut scope = scope.allow(Action::ManageMembers)?;
        let user = parse_user(user)?;
        let before = scope.tx.member(user).await?;
        check_rank(&scope.caller, before.role, Some(role))?;
        let after = scope.tx.set_member_role(user, role).await.map_err(last_owner)?;
        if before.role != after.role {
            let details = json!({ "from": before.role, "to": after.role });
            scope.audit("member.update", format!("members/{user}"), details).await?;
        }
        scope.commit().await?;
        Ok(after)
    }

    /// Removes a member (not one above the caller, not the last owner).
    pub async fn remove_member(&self, scope: Scope, user: &str) -> Result<(), AppError> {
        let mut scope = scope.allow(Action::ManageMembers)?;
        let user = parse_user(user)?;
        let before = scope.tx.member(user).await?;
        check_rank(&scope.caller, before.role, None)?;
        scope.tx.remove_member(user).await.map_err(last_owner)?;
        let details = json!({ "role": before.role, "email": before.email });
        scope.audit("member.remove", format!("members/{user}"), details).await?;
        scope.commit().await?;
        Ok(())
    }

    /// Invites someone by email; the invitation's token is returned this once.
    pub async fn create_invite(&self, scope: Scope, req: NewInvite) -> Result<(Invite, String), AppError> {
        let mut scope = scope.allow(Action::ManageMembers)?;
        if !valid_email(&req.email) {
            return Err(AppError::invalid_field("email", "must be an email address (3-320 characters)"));
        }
        let hours = req.expires_in_hours.unwrap_or(DEFAULT_INVITE_HOURS);
        if !(1..=MAX_INVITE_HOURS).contains(&hours) {
            return Err(AppError::invalid_field("expiresInHours", "must be 1 to 720"));
        }
        let role = scope.caller.role;
        if req.role < role {
            return Err(AppError::forbidden(format!("a {role} may not invite with the role {}", req.role)));
        }
        let mut secret = [0u8; SECRET_LEN];
        rand::rng().fill_bytes(&mut secret);
        let token = Token::new(TokenKind::Invite, scope.caller.org.id, secret).to_string();
        let actor = scope.caller.actor.clone();
        let expires = Utc::now() + Duration::hours(hours);
        let invite =
            scope.tx.create_invite(&req.email, req.role, &token_hash(&token), &actor, expires).await?;
        let details = json!({ "email": invite.email, "role": invite.role });
        scope.audit("invite.create", format!("invites/{}", invite.id), details).await?;
        scope.commit().await?;
        Ok((invite, token))
    }

    /// The organization's invitations.
    pub async fn list_invites(&self, scope: Scope) -> Result<Vec<Invite>, AppError> {
        let mut scope = scope.allow(Action::ManageMembers)?;
        let invites = scope.tx.list_invites().await?;
        scope.commit().await?;
        Ok(invites)
    }

    /// Revokes an invitation.
    pub async fn revoke_invite(&self, scope: Scope, id: &str) -> Result<Invite, AppError> {
        let mut scope = scope.allow(Action::ManageMembers)?;
        let id: Uuid = id.parse().map_err(|_| AppError::not_found("invitation not found"))?;
        let invite = scope.tx.revoke_invite(id).await?;
        scope.audit("invite.revoke", format!("invites/{id}"), json!({ "email": invite.email })).await?;
        scope.commit().await?;
        Ok(invite)
    }

    /// The logged-in user accepts an invitation sent to their email address and joins.
    pub async fn accept_invite(&self, request: &Request, token: &str) -> Result<Accepted, AppError> {
        let Principal::User { user, .. } = self.authenticate(request).await? else {
            return Err(AppError::forbidden(
                "an invitation is accepted by a logged-in user, not with an API token",
            ));
        };
        let gone =
            || AppError::not_found("invitation not found: it may have been used, revoked or have expired");
        let parsed = Token::parse(TokenKind::Invite, token).map_err(|_| gone())?;
        let mut tx = self.tenant(parsed.org).await?;
        let invite = tx.pending_invite(&token_hash(token)).await?.ok_or_else(gone)?;
        let matches = user.email.as_deref().is_some_and(|e| e.eq_ignore_ascii_case(&invite.email));
        if !matches {
            return Err(AppError::forbidden(
                "this invitation was sent to another email address than the one you logged in with",
            ));
        }
        if tx.member_role(user.id).await?.is_some() {
            return Err(AppError::conflict("you are already a member of this organization"));
        }
        tx.add_member(user.id, invite.role).await?;
        tx.accept_invite(invite.id, user.id).await?;
        tx.record_audit(&AuditEvent {
            actor: format!("user:{}", user.id),
            action: "invite.accept".into(),
            target: format!("invites/{}", invite.id),
            request_id: request.request_id.clone(),
            details: json!({ "email": invite.email, "role": invite.role }),
        })
        .await?;
        let org = tx.own_org().await?;
        tx.commit().await?;
        Ok(Accepted { org, role: invite.role })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_checked_loosely_but_bounded() {
        assert!(valid_email("a@b"));
        assert!(valid_email("alice.x+y@example.com"));
        for bad in ["", "ab", "no-at", "@x.y", "x@", "a@b@c", "a b@c", "a\n@b"] {
            assert!(!valid_email(bad), "{bad:?}");
        }
        assert!(!valid_email(&format!("{}@example.com", "a".repeat(320))));
    }
}
