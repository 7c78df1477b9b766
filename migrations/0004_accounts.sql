-- Accounts: OpenID Connect logins in progress, server-side sessions, the no-IdP local admin
-- login links, invitations, and the narrow way a user lists their own organizations.
--
-- Only SHA-256 hashes of session ids, login ids and invitation tokens are stored: a copy of
-- the database lets nobody log in or accept an invitation.

-- The user of the current transaction, or NULL when none is set (see `UserTx`).
CREATE FUNCTION trellis_current_user() RETURNS uuid
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $$ SELECT NULLIF(current_setting('app.user_id', true), '')::uuid $$;

-- "Which organizations am I in?" crosses tenants by nature. Rather than lifting RLS, a
-- transaction that has set `app.user_id` (and no tenant) may SELECT the membership rows of
-- that one user: (org, role), nothing of any tenant's data. Writes still need the tenant.
CREATE POLICY memberships_own ON memberships FOR SELECT USING (user_id = trellis_current_user());
CREATE INDEX memberships_user_idx ON memberships (user_id);

ALTER TABLE users ADD COLUMN last_login_at timestamptz;
ALTER TABLE users ADD CONSTRAINT users_email_len CHECK (email IS NULL OR length(email) <= 320);
ALTER TABLE users ADD CONSTRAINT users_display_name_len
    CHECK (display_name IS NULL OR length(display_name) <= 200);

-- A login in progress: created at /auth/login, consumed (deleted) by the first callback that
-- presents its cookie, whatever the outcome. Keyed by the SHA-256 of the random id in the
-- short-lived `__Host-trellis_login` cookie; state, nonce and PKCE verifier never leave
-- the server except as the IdP protocol requires (state and the PKCE challenge).
CREATE TABLE oidc_logins (
    id_sha256      bytea       NOT NULL,
    state          text        NOT NULL,
    nonce          text        NOT NULL,
    pkce_verifier  text        NOT NULL,
    return_to      text        NOT NULL DEFAULT '/',
    created_at     timestamptz NOT NULL DEFAULT now(),
    expires_at     timestamptz NOT NULL,
    CONSTRAINT oidc_logins_pkey PRIMARY KEY (id_sha256),
    CONSTRAINT oidc_logins_hash_len CHECK (octet_length(id_sha256) = 32)
);

-- Server-side sessions: the cookie holds a random id, the table its SHA-256. A session
-- belongs to a user, not to an organization; each request's role comes from the
-- membership in the organization it addresses.
CREATE TABLE sessions (
    id            uuid        NOT NULL DEFAULT gen_random_uuid(),
    token_sha256  bytea       NOT NULL,
    user_id       uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_seen_at  timestamptz NOT NULL DEFAULT now(),
    -- Absolute expiry; the idle expiry is last_seen_at + the configured idle timeout.
    expires_at    timestamptz NOT NULL,
    CONSTRAINT sessions_pkey PRIMARY KEY (id),
    CONSTRAINT sessions_token_key UNIQUE (token_sha256),
    CONSTRAINT sessions_hash_len CHECK (octet_length(token_sha256) = 32)
);
CREATE INDEX sessions_user_idx ON sessions (user_id);

-- One-time login links of the no-IdP mode, printed by `trellis serve`.
CREATE TABLE local_logins (
    token_sha256  bytea       NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL,
    used_at       timestamptz,
    CONSTRAINT local_logins_pkey PRIMARY KEY (token_sha256),
    CONSTRAINT local_logins_hash_len CHECK (octet_length(token_sha256) = 32)
);

-- Invitations: a tenant table. The token text (`trls_inv_…`) carries the organization id,
-- so acceptance looks it up inside that tenant, like API tokens.
CREATE TABLE invites (
    org_id        uuid        NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    id            uuid        NOT NULL DEFAULT gen_random_uuid(),
    email         text        NOT NULL,
    role          text        NOT NULL,
    token_sha256  bytea       NOT NULL,
    created_by    text        NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL,
    accepted_at   timestamptz,
    accepted_by   uuid        REFERENCES users (id) ON DELETE SET NULL,
    revoked_at    timestamptz,
    CONSTRAINT invites_pkey PRIMARY KEY (org_id, id),
    CONSTRAINT invites_hash_key UNIQUE (org_id, token_sha256),
    CONSTRAINT invites_role_check CHECK (role IN ('owner', 'admin', 'editor', 'viewer')),
    CONSTRAINT invites_hash_len CHECK (octet_length(token_sha256) = 32),
    CONSTRAINT invites_email_len CHECK (length(email) BETWEEN 3 AND 320)
);
ALTER TABLE invites ENABLE ROW LEVEL SECURITY;
ALTER TABLE invites FORCE ROW LEVEL SECURITY;
CREATE POLICY invites_tenant ON invites USING (org_id = trellis_current_org())
    WITH CHECK (org_id = trellis_current_org());

GRANT SELECT, INSERT, DELETE ON oidc_logins TO trellis_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON sessions TO trellis_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON local_logins TO trellis_app;
GRANT SELECT, INSERT, UPDATE ON invites TO trellis_app;
GRANT EXECUTE ON FUNCTION trellis_current_user() TO trellis_app;
