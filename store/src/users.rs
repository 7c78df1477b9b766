//! Users (global identities, one per OpenID issuer and subject), their memberships in
//! organizations (tenant rows), and [`UserTx`], the narrow way to list one user's own
//! organizations across tenants.

use chrono::{DateTime, Utc};
use sqlx::{Postgres, Transaction};
use trellis_model::{OrgId, OrgSlug, Role};
use uuid::Uuid;

use crate::{Org, Store, StoreError, TenantTx};

/// A person who can log in.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct User {
    pub id: Uuid,
    pub oidc_issuer: String,
    pub oidc_subject: String,
    pub email: Option<String>,
    pub display_name: Option<String>,
    pub created_at: DateTime<Utc>,
    pub last_login_at: Option<DateTime<Utc>>,
}

/// A member of the current organization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub user_id: Uuid,
    pub email: Option<String>,
    pub display_name: Option<String>,
    pub role: Role,
    pub created_at: DateTime<Utc>,
}

/// One organization a user belongs to, with their role there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    pub org: Org,
    pub role: Role,
}

macro_rules! user_columns {
    () => {
        "id, oidc_issuer, oidc_subject, email, display_name, created_at, last_login_at"
    };
}

fn parse_role(s: &str) -> Result<Role, StoreError> {
    s.parse().map_err(|e: String| StoreError::Db(sqlx::Error::Decode(e.into())))
}

impl Store {
    /// The user with this OpenID issuer and subject.
    pub async fn user_by_subject(&self, issuer: &str, subject: &str) -> Result<Option<User>, StoreError> {
        Ok(sqlx::query_as(concat!(
            "SELECT ",
            user_columns!(),
            " FROM users WHERE oidc_issuer = $1 AND oidc_subject = $2"
        ))
        .bind(issuer)
        .bind(subject)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// The user with this id.
    pub async fn user(&self, id: Uuid) -> Result<Option<User>, StoreError> {
        Ok(sqlx::query_as(concat!("SELECT ", user_columns!(), " FROM users WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?)
    }

    /// Records a login: the time, and the email and name the IdP sent this time.
    pub async fn record_login(
        &self,
        id: Uuid,
        email: Option<&str>,
        display_name: Option<&str>,
    ) -> Result<User, StoreError> {
        sqlx::query_as(concat!(
            "UPDATE users SET last_login_at = now(), email = coalesce($2, email), \
             display_name = coalesce($3, display_name) WHERE id = $1 RETURNING ",
            user_columns!()
        ))
        .bind(id)
        .bind(email)
        .bind(display_name)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound("user"))
    }

    /// Begins a transaction that acts for one user: it sees that user's own membership
    /// rows in every organization, and no tenant's data.
    pub async fn user_tx(&self, user: Uuid) -> Result<UserTx, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT set_config('app.user_id', $1, true)")
            .bind(user.to_string())
            .execute(&mut *tx)
            .await?;
        Ok(UserTx { tx, user })
    }
}

/// A transaction bound to a user (`app.user_id`) and to no tenant. The policy
/// `memberships_own` lets it read that user's membership rows, and nothing else of any
/// tenant.
pub struct UserTx {
    tx: Transaction<'static, Postgres>,
    user: Uuid,
}

impl UserTx {
    /// The user's organizations and roles, by slug.
    pub async fn memberships(&mut self) -> Result<Vec<Membership>, StoreError> {
        let rows: Vec<(Uuid, String, String, DateTime<Utc>, String)> = sqlx::query_as(
            "SELECT o.id, o.slug, o.name, o.created_at, m.role FROM memberships m \
             JOIN organizations o ON o.id = m.org_id WHERE m.user_id = $1 ORDER BY o.slug",
        )
        .bind(self.user)
        .fetch_all(&mut *self.tx)
        .await?;
        rows.into_iter()
            .map(|(id, slug, name, created_at, role)| {
                Ok(Membership {
                    org: Org {
                        id: OrgId::from_uuid(id),
                        slug: OrgSlug::parse(&slug)
                            .map_err(|e| StoreError::Db(sqlx::Error::Decode(e.to_string().into())))?,
                        name,
                        created_at,
                    },
                    role: parse_role(&role)?,
                })
            })
            .collect()
    }

    /// The organization this user has owned the longest: for installations from before the
    /// local admin was bound by id, the one it created at its first login.
    pub async fn oldest_owned_org(&mut self) -> Result<Option<OrgId>, StoreError> {
        let id: Option<Uuid> = sqlx::query_scalar(
            "SELECT org_id FROM memberships WHERE user_id = $1 AND role = 'owner' \
             ORDER BY created_at, org_id LIMIT 1",
        )
        .bind(self.user)
        .fetch_optional(&mut *self.tx)
        .await?;
        Ok(id.map(OrgId::from_uuid))
    }

    /// Ends the (read-only) transaction.
    pub async fn commit(self) -> Result<(), StoreError> {
        self.tx.commit().await?;
        Ok(())
    }
}

/// What sign-up knows about a new user.
#[derive(Debug, Clone)]
pub struct NewUser<'a> {
    pub oidc_issuer: &'a str,
    pub oidc_subject: &'a str,
    pub email: Option<&'a str>,
    pub display_name: Option<&'a str>,
}

/// The no-IdP mode's local admin, and the organization it created (`None` once that
/// organization was deleted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalAdmin {
    pub user: Uuid,
    pub org: Option<OrgId>,
}

/// Serializes the local logins of every replica while one decides the binding.
const LOCAL_ADMIN_LOCK: i64 = 7_533_110_002;

impl TenantTx {
    /// Takes the local-admin lock for the rest of this transaction and reads the binding.
    pub async fn lock_local_admin(&mut self) -> Result<Option<LocalAdmin>, StoreError> {
        sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(LOCAL_ADMIN_LOCK).execute(self.conn()).await?;
        let row: Option<(Uuid, Option<Uuid>)> =
            sqlx::query_as("SELECT user_id, created_org FROM local_admin WHERE id = 1")
                .fetch_optional(self.conn())
                .await?;
        Ok(row.map(|(user, org)| LocalAdmin { user, org: org.map(OrgId::from_uuid) }))
    }

    /// Binds the local admin to the organization it created, by id.
    pub async fn bind_local_admin(&mut self, user: Uuid, org: OrgId) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO local_admin (id, user_id, created_org) VALUES (1, $1, $2) \
             ON CONFLICT (id) DO UPDATE SET user_id = EXCLUDED.user_id, \
               created_org = EXCLUDED.created_org, bound_at = now()",
        )
        .bind(user)
        .bind(org.as_uuid())
        .execute(self.conn())
        .await?;
        Ok(())
    }

    /// Creates a user in this transaction, so that sign-up (user, organization, owner
    /// membership, audit) commits or fails as one. Users are global, not tenant rows.
    pub async fn insert_user(&mut self, new: &NewUser<'_>) -> Result<User, StoreError> {
        Ok(sqlx::query_as(concat!(
            "INSERT INTO users (oidc_issuer, oidc_subject, email, display_name, last_login_at) \
             VALUES ($1, $2, $3, $4, now()) RETURNING ",
            user_columns!()
        ))
        .bind(new.oidc_issuer)
        .bind(new.oidc_subject)
        .bind(new.email)
        .bind(new.display_name)
        .fetch_one(self.conn())
        .await?)
    }

    /// The caller's role in this organization, if a member.
    pub async fn member_role(&mut self, user: Uuid) -> Result<Option<Role>, StoreError> {
        let role: Option<String> = sqlx::query_scalar("SELECT role FROM memberships WHERE user_id = $1")
            .bind(user)
            .fetch_optional(self.conn())
            .await?;
        role.as_deref().map(parse_role).transpose()
    }

    /// Adds a member; an existing member is a conflict (`memberships_pkey`).
    pub async fn add_member(&mut self, user: Uuid, role: Role) -> Result<(), StoreError> {
        let org = self.org().as_uuid();
        sqlx::query("INSERT INTO memberships (org_id, user_id, role) VALUES ($1, $2, $3)")
            .bind(org)
            .bind(user)
            .bind(role.as_str())
            .execute(self.conn())
            .await?;
        Ok(())
    }

    /// Every member, oldest first.
    pub async fn members(&mut self) -> Result<Vec<Member>, StoreError> {
        let rows: Vec<MemberRow> = sqlx::query_as(
            "SELECT m.user_id, u.email, u.display_name, m.role, m.created_at FROM memberships m \
             JOIN users u ON u.id = m.user_id ORDER BY m.created_at, m.user_id",
        )
        .fetch_all(self.conn())
        .await?;
        rows.into_iter().map(MemberRow::into_member).collect()
    }

    /// One member.
    pub async fn member(&mut self, user: Uuid) -> Result<Member, StoreError> {
        let row: Option<MemberRow> = sqlx::query_as(
            "SELECT m.user_id, u.email, u.display_name, m.role, m.created_at FROM memberships m \
             JOIN users u ON u.id = m.user_id WHERE m.user_id = $1",
        )
        .bind(user)
        .fetch_optional(self.conn())
        .await?;
        row.ok_or(StoreError::NotFound("member"))?.into_member()
    }

    /// Changes a member's role. The last owner cannot be demoted ([`StoreError::LastOwner`]).
    pub async fn set_member_role(&mut self, user: Uuid, role: Role) -> Result<Member, StoreError> {
        let current = self.lock_member(user).await?;
        if current == Role::Owner && role != Role::Owner {
            self.ensure_another_owner(user).await?;
        }
        sqlx::query("UPDATE memberships SET role = $2 WHERE user_id = $1")
            .bind(user)
            .bind(role.as_str())
            .execute(self.conn())
            .await?;
        self.member(user).await
    }

    /// Removes a member. The last owner cannot be removed ([`StoreError::LastOwner`]).
    pub async fn remove_member(&mut self, user: Uuid) -> Result<Member, StoreError> {
        let member = self.member(user).await?;
        if self.lock_member(user).await? == Role::Owner {
            self.ensure_another_owner(user).await?;
        }
        sqlx::query("DELETE FROM memberships WHERE user_id = $1").bind(user).execute(self.conn()).await?;
        Ok(member)
    }

    /// Locks the owners (always first, in one order, so that concurrent changes queue
    /// instead of deadlocking) and then the member; returns the member's role.
    async fn lock_member(&mut self, user: Uuid) -> Result<Role, StoreError> {
        sqlx::query("SELECT user_id FROM memberships WHERE role = 'owner' ORDER BY user_id FOR UPDATE")
            .execute(self.conn())
            .await?;
        let role: Option<String> =
            sqlx::query_scalar("SELECT role FROM memberships WHERE user_id = $1 FOR UPDATE")
                .bind(user)
                .fetch_optional(self.conn())
                .await?;
        parse_role(&role.ok_or(StoreError::NotFound("member"))?)
    }

    async fn ensure_another_owner(&mut self, user: Uuid) -> Result<(), StoreError> {
        let others: i64 =
            sqlx::query_scalar("SELECT count(*) FROM memberships WHERE role = 'owner' AND user_id <> $1")
                .bind(user)
                .fetch_one(self.conn())
                .await?;
        if others == 0 { Err(StoreError::LastOwner) } else { Ok(()) }
    }

    /// Creates this transaction's organization (its id is the transaction's tenant).
    pub async fn create_own_org(&mut self, slug: &OrgSlug, name: &str) -> Result<Org, StoreError> {
        crate::orgs::insert_org(self, slug, name).await
    }
}

#[derive(sqlx::FromRow)]
struct MemberRow {
    user_id: Uuid,
    email: Option<String>,
    display_name: Option<String>,
    role: String,
    created_at: DateTime<Utc>,
}

impl MemberRow {
    fn into_member(self) -> Result<Member, StoreError> {
        Ok(Member {
            user_id: self.user_id,
            email: self.email,
            display_name: self.display_name,
            role: parse_role(&self.role)?,
            created_at: self.created_at,
        })
    }
}
