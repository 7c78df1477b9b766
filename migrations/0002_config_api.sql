-- The configuration API: mesh trust domains and ETags, API tokens, idempotency keys.

-- A mesh's SPIFFE trust domain names its identities; two meshes, of any tenants, never share one.
ALTER TABLE meshes ADD COLUMN trust_domain text;
UPDATE meshes SET trust_domain = id::text || '.mesh.trellis.internal';
ALTER TABLE meshes ALTER COLUMN trust_domain SET NOT NULL;
ALTER TABLE meshes ADD CONSTRAINT meshes_trust_domain_key UNIQUE (trust_domain);
-- The mesh's own ETag: changes when its spec or labels do, not when its resources do.
ALTER TABLE meshes ADD COLUMN version uuid NOT NULL DEFAULT gen_random_uuid();

-- API tokens (`trls_pat_…`): only the SHA-256 of the token is kept.
CREATE TABLE api_tokens (
    org_id        uuid        NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    id            uuid        NOT NULL DEFAULT gen_random_uuid(),
    name          text        NOT NULL,
    role          text        NOT NULL,
    token_sha256  bytea       NOT NULL,
    created_by    text        NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz,
    revoked_at    timestamptz,
    last_used_at  timestamptz,
    CONSTRAINT api_tokens_pkey PRIMARY KEY (org_id, id),
    CONSTRAINT api_tokens_hash_key UNIQUE (org_id, token_sha256),
    CONSTRAINT api_tokens_role_check CHECK (role IN ('owner', 'admin', 'editor', 'viewer')),
    CONSTRAINT api_tokens_hash_len CHECK (octet_length(token_sha256) = 32)
);

-- Responses to POSTs that carried an Idempotency-Key, replayed for a retry of the same
-- request. Bodies never hold secrets (a token is shown once, not replayed).
CREATE TABLE idempotency_keys (
    org_id        uuid        NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    key           text        NOT NULL,
    fingerprint   bytea       NOT NULL,
    status        integer     NOT NULL,
    body          jsonb       NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT idempotency_keys_pkey PRIMARY KEY (org_id, key)
);

DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['api_tokens', 'idempotency_keys'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format(
            'CREATE POLICY %I ON %I USING (org_id = trellis_current_org()) '
            'WITH CHECK (org_id = trellis_current_org())', t || '_tenant', t);
    END LOOP;
END
$$;

GRANT SELECT, INSERT, UPDATE ON api_tokens TO trellis_app;
GRANT SELECT, INSERT, DELETE ON idempotency_keys TO trellis_app;
