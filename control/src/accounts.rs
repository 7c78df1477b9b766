//! Accounts: logins in progress, sign-up (a user and an organization of their own), the
//! no-IdP local admin, sessions and logout. The OpenID Connect exchange itself is the front
//! end's; it hands over the verified [`Identity`].

use std::time::Duration;

use chrono::Utc;
use serde_json::{Value, json};
use trellis_model::{OrgId, OrgSlug, Role};
use trellis_store::{AuditEvent, NewUser, PendingLogin, Store, StoreError, User};

use crate::caller::token_hash;
use crate::{AppError, Control};

/// The issuer recorded for the no-IdP mode's local admin.
pub const LOCAL_ISSUER: &str = "trellis:local";
const LOCAL_SUBJECT: &str = "admin";

/// A verified identity from the identity provider.
#[derive(Debug, Clone)]
pub struct Identity {
    pub issuer: String,
    pub subject: String,
    pub email: Option<String>,
    pub name: Option<String>,
}

/// How sessions and the local admin work on this installation.
#[derive(Debug, Clone)]
pub struct AccountSettings {
    /// A session ends after this long without a request …
    pub session_idle: Duration,
    /// … and this long after login, whatever happens.
    pub session_lifetime: Duration,
    /// No-IdP mode: the slug of the organization the local admin's first login creates.
    pub local_org: OrgSlug,
}

/// A session just started: its secret (the cookie's value, never stored).
pub struct NewSession {
    pub secret: String,
}

/// Records a one-time local admin login (no-IdP mode) under `secret`, valid for `ttl`.
pub async fn mint_local_login(store: &Store, secret: &str, ttl: Duration) -> Result<(), StoreError> {
    store.create_local_login(&token_hash(secret), Utc::now() + ttl).await
}

/// 256 random bits, URL-safe base64: session ids, login ids, local login links.
pub fn random_secret() -> String {
    use base64::Engine;
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

impl Control {
    /// Remembers a login in progress under `login_id` until `ttl` has passed.
    pub async fn begin_login(
        &self,
        login_id: &str,
        pending: &PendingLogin,
        ttl: Duration,
    ) -> Result<(), AppError> {
        Ok(self.store.begin_login(&token_hash(login_id), pending, Utc::now() + ttl).await?)
    }

    /// Takes the login in progress under `login_id`: a login is consumed by the first
    /// callback that presents it, whatever the outcome.
    pub async fn take_login(&self, login_id: &str) -> Result<Option<PendingLogin>, AppError> {
        Ok(self.store.take_login(&token_hash(login_id)).await?)
    }

    /// The user for this identity, created with an organization of their own on first login;
    /// then a new session (replacing the browser's `previous` one).
    pub async fn log_in(
        &self,
        identity: &Identity,
        previous: Option<&str>,
        request_id: Option<String>,
    ) -> Result<NewSession, AppError> {
        let user = self.find_or_sign_up(identity, request_id.clone()).await?;
        self.start_session(&user, previous, request_id).await
    }

    /// Uses a one-time local login link and logs in the local admin.
    pub async fn log_in_locally(
        &self,
        token: &str,
        previous: Option<&str>,
        request_id: Option<String>,
    ) -> Result<NewSession, AppError> {
        if !self.store.use_local_login(&token_hash(token)).await? {
            return Err(AppError::unauthorized(
                "this login link was already used or has expired; restart `trellis serve` for a new one",
            ));
        }
        let (user, _) = ensure_local_admin(&self.store, &self.accounts.local_org, request_id.clone()).await?;
        self.start_session(&user, previous, request_id).await
    }

    /// Ends the session with this secret, if it is live.
    pub async fn log_out(&self, secret: &str, request_id: Option<String>) -> Result<(), AppError> {
        let Some(session) = self.store.session(&token_hash(secret), self.accounts.session_idle).await? else {
            return Ok(());
        };
        self.store.delete_session(&token_hash(secret)).await?;
        if let Some(user) = self.store.user(session.user_id).await? {
            self.audit_in_every_org(&user, "session.logout", request_id, json!({ "session": session.id }))
                .await?;
        }
        Ok(())
    }

    /// How long a new session lives.
    pub fn session_lifetime(&self) -> Duration {
        self.accounts.session_lifetime
    }

    async fn find_or_sign_up(&self, id: &Identity, request_id: Option<String>) -> Result<User, AppError> {
        let store = &self.store;
        if let Some(user) = store.user_by_subject(&id.issuer, &id.subject).await? {
            return Ok(store.record_login(user.id, id.email.as_deref(), id.name.as_deref()).await?);
        }
        let label = id.name.as_deref().or(id.email.as_deref()).unwrap_or("my organization");
        let base = OrgSlug::derive(label, 30);
        let org_name: String = label.chars().take(100).collect();
        for slug in candidate_slugs(&base) {
            if store.org_by_slug(&slug).await?.is_some() {
                continue;
            }
            let new = NewUser {
                oidc_issuer: &id.issuer,
                oidc_subject: &id.subject,
                email: id.email.as_deref(),
                display_name: id.name.as_deref(),
            };
            match self.sign_up(&new, &slug, &org_name, request_id.clone()).await {
                Ok(user) => return Ok(user),
                Err(StoreError::Conflict { constraint }) if constraint == "organizations_slug_key" => {
                    continue;
                }
                // A concurrent first login of the same person won the race: use its user.
                Err(StoreError::Conflict { constraint }) if constraint == "users_subject_key" => {
                    return store.user_by_subject(&id.issuer, &id.subject).await?.ok_or_else(|| {
                        AppError::internal(&"a user vanished right after a conflicting sign-up")
                    });
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(AppError::conflict("no free organization slug was found for the sign-up; try again"))
    }

    /// Creates the user, their organization, the owner membership and the audit events in
    /// one transaction.
    async fn sign_up(
        &self,
        new: &NewUser<'_>,
        slug: &OrgSlug,
        org_name: &str,
        request_id: Option<String>,
    ) -> Result<User, StoreError> {
        let mut tx = self.store.tenant(OrgId::new()).await?;
        let user = tx.insert_user(new).await?;
        let org = tx.create_own_org(slug, org_name).await?;
        tx.add_member(user.id, Role::Owner).await?;
        let actor = format!("user:{}", user.id);
        tx.record_audit(&AuditEvent {
            actor: actor.clone(),
            action: "user.signup".into(),
            target: format!("users/{}", user.id),
            request_id: request_id.clone(),
            details: json!({ "issuer": new.oidc_issuer, "email": new.email }),
        })
        .await?;
        tx.record_audit(&AuditEvent {
            actor,
            action: "org.create".into(),
            target: format!("orgs/{}", org.slug),
            request_id,
            details: json!({ "name": org.name }),
        })
        .await?;
        tx.commit().await?;
        tracing::info!(user = %user.id, org = %org.slug, "sign-up");
        Ok(user)
    }

    /// Creates a session for `user` (replacing the browser's previous one: the id is rotated
    /// at every login) and records the login.
    async fn start_session(
        &self,
        user: &User,
        previous: Option<&str>,
        request_id: Option<String>,
    ) -> Result<NewSession, AppError> {
        if let Some(old) = previous {
            self.store.delete_session(&token_hash(old)).await?;
        }
        let secret = random_secret();
        let expires = Utc::now() + self.accounts.session_lifetime;
        let session = self.store.create_session(&token_hash(&secret), user.id, expires).await?;
        self.audit_in_every_org(user, "session.login", request_id, json!({ "session": session.id })).await?;
        Ok(NewSession { secret })
    }

    /// Logins and logouts concern every organization the user can act in: each one's audit
    /// log shows them.
    async fn audit_in_every_org(
        &self,
        user: &User,
        action: &str,
        request_id: Option<String>,
        details: Value,
    ) -> Result<(), AppError> {
        let mut utx = self.store.user_tx(user.id).await?;
        let orgs = utx.memberships().await?;
        utx.commit().await?;
        for m in orgs {
            let mut tx = self.store.tenant(m.org.id).await?;
            tx.record_audit(&AuditEvent {
                actor: format!("user:{}", user.id),
                action: action.to_owned(),
                target: format!("users/{}", user.id),
                request_id: request_id.clone(),
                details: details.clone(),
            })
            .await?;
            tx.commit().await?;
        }
        Ok(())
    }
}

/// The local admin, bound by id to the organization it created (never to whatever
/// organization holds the local slug today: any tenant may rename itself to that slug).
/// A login changes no membership of an existing organization; only when there is none
/// yet, or it was deleted, does the local admin get a new organization, under the
/// configured slug when that is free. Its first login, or `trellis create-token
/// --local-admin`, makes it; each answers the user and the organization it is bound to.
pub async fn ensure_local_admin(
    store: &Store,
    local_org: &OrgSlug,
    request_id: Option<String>,
) -> Result<(User, OrgId), AppError> {
    let mut tx = store.tenant(OrgId::new()).await?;
    let binding = tx.lock_local_admin().await?;
    let existing_user = store.user_by_subject(LOCAL_ISSUER, LOCAL_SUBJECT).await?;
    let bound_org = match (&binding, &existing_user) {
        (Some(b), _) => b.org,
        // Installed before the binding existed: the organization it created is the one it
        // has owned the longest.
        (None, Some(user)) => {
            let mut utx = store.user_tx(user.id).await?;
            let org = utx.oldest_owned_org().await?;
            utx.commit().await?;
            org
        }
        (None, None) => None,
    };
    if let (Some(user), Some(org)) = (&existing_user, bound_org) {
        if binding.is_none() {
            tx.bind_local_admin(user.id, org).await?;
        }
        tx.commit().await?;
        return Ok((store.record_login(user.id, None, None).await?, org));
    }
    let user = match existing_user {
        Some(u) => u,
        None => {
            tx.insert_user(&NewUser {
                oidc_issuer: LOCAL_ISSUER,
                oidc_subject: LOCAL_SUBJECT,
                email: None,
                display_name: Some("Local admin"),
            })
            .await?
        }
    };
    let mut slug = None;
    for candidate in candidate_slugs(local_org) {
        if store.org_by_slug(&candidate).await?.is_none() {
            slug = Some(candidate);
            break;
        }
    }
    let slug = slug.ok_or_else(|| {
        AppError::conflict("no free organization slug was found for the local admin; set TRELLIS_LOCAL_ORG")
    })?;
    if &slug != local_org {
        tracing::warn!(taken = %local_org, %slug,
            "the local organization's slug belongs to another organization; the local admin gets its own");
    }
    let org = tx.create_own_org(&slug, slug.as_str()).await?;
    tx.add_member(user.id, Role::Owner).await?;
    tx.bind_local_admin(user.id, org.id).await?;
    let actor = format!("user:{}", user.id);
    tx.record_audit(&AuditEvent {
        actor: actor.clone(),
        action: "org.create".into(),
        target: format!("orgs/{}", org.slug),
        request_id: request_id.clone(),
        details: json!({ "name": org.name, "via": "local-admin" }),
    })
    .await?;
    tx.record_audit(&AuditEvent {
        actor,
        action: "member.add".into(),
        target: format!("members/{}", user.id),
        request_id,
        details: json!({ "role": Role::Owner, "via": "local-admin" }),
    })
    .await?;
    tx.commit().await?;
    Ok((store.record_login(user.id, None, None).await?, org.id))
}

/// Slugs to try for a new organization: `base`, then `base-<4 random hex digits>`.
fn candidate_slugs(base: &OrgSlug) -> impl Iterator<Item = OrgSlug> + '_ {
    std::iter::once(base.clone()).chain((1..8).map(|_| {
        base.with_suffix(&format!("{:04x}", rand::random::<u16>())).expect("a hex suffix keeps a slug valid")
    }))
}
