-- Per-mesh certificate authorities, trust bundles, join tokens, the issued-leaf ledger and
-- the platform CA; and the revisions behind each resource's propagation status. Private keys are stored only sealed (AES-256-GCM under a KEK that is not
-- in the database): `key_kek_id`, `key_nonce`, `key_ciphertext`.

-- Per-mesh SVID lifetime and trust-bundle sequence (grows on every change of the bundle).
ALTER TABLE meshes ADD COLUMN svid_ttl_seconds integer NOT NULL DEFAULT 86400;
ALTER TABLE meshes ADD CONSTRAINT meshes_svid_ttl_check CHECK (svid_ttl_seconds BETWEEN 3600 AND 604800);
ALTER TABLE meshes ADD COLUMN bundle_sequence bigint NOT NULL DEFAULT 0;

-- A mesh's signing CAs over time. The life of one:
--   pending   a bring-your-own intermediate whose CSR went out and whose chain is awaited
--   prepared  its root is in the trust bundle; it does not sign yet
--   active    it signs new leaves (exactly one per mesh); its root is in the bundle
--   previous  it was active; its root stays in the bundle while its leaves live
--   retired   out of the bundle for good
CREATE TABLE mesh_cas (
    org_id          uuid        NOT NULL,
    mesh_id         uuid        NOT NULL,
    id              uuid        NOT NULL DEFAULT gen_random_uuid(),
    origin          text        NOT NULL,
    state           text        NOT NULL,
    -- This CA's certificate first, then the rest of its chain up to the root (DER each).
    chain           bytea[]     NOT NULL DEFAULT '{}',
    root_fingerprint text,
    not_after       timestamptz,
    csr_pem         text,
    key_kek_id      text        NOT NULL,
    key_nonce       bytea       NOT NULL,
    key_ciphertext  bytea       NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    activated_at    timestamptz,
    retired_at      timestamptz,
    CONSTRAINT mesh_cas_pkey PRIMARY KEY (org_id, id),
    CONSTRAINT mesh_cas_mesh_fkey FOREIGN KEY (org_id, mesh_id) REFERENCES meshes (org_id, id) ON DELETE CASCADE,
    CONSTRAINT mesh_cas_origin_check CHECK (origin IN ('generated', 'intermediate_csr', 'uploaded')),
    CONSTRAINT mesh_cas_state_check CHECK (state IN ('pending', 'prepared', 'active', 'previous', 'retired')),
    CONSTRAINT mesh_cas_chain_check CHECK (state = 'pending' OR cardinality(chain) >= 1)
);
CREATE UNIQUE INDEX mesh_cas_one_active ON mesh_cas (org_id, mesh_id) WHERE state = 'active';
-- At most one rotation in flight: one CA waiting to become active.
CREATE UNIQUE INDEX mesh_cas_one_next ON mesh_cas (org_id, mesh_id) WHERE state IN ('pending', 'prepared');

-- Join tokens: only the SHA-256 is kept.
CREATE TABLE join_tokens (
    org_id          uuid        NOT NULL,
    mesh_id         uuid        NOT NULL,
    id              uuid        NOT NULL DEFAULT gen_random_uuid(),
    token_sha256    bytea       NOT NULL,
    service         text        NOT NULL,
    tags            jsonb       NOT NULL DEFAULT '{}'::jsonb,
    single_use      boolean     NOT NULL DEFAULT false,
    created_by      text        NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz NOT NULL,
    used_at         timestamptz,
    uses            bigint      NOT NULL DEFAULT 0,
    revoked_at      timestamptz,
    CONSTRAINT join_tokens_pkey PRIMARY KEY (org_id, id),
    CONSTRAINT join_tokens_hash_key UNIQUE (token_sha256),
    CONSTRAINT join_tokens_mesh_fkey FOREIGN KEY (org_id, mesh_id) REFERENCES meshes (org_id, id) ON DELETE CASCADE
);

-- Every leaf issued: what rotation needs to count the live leaves of each CA.
CREATE TABLE issued_svids (
    org_id          uuid        NOT NULL,
    mesh_id         uuid        NOT NULL,
    serial          text        NOT NULL,
    ca_id           uuid        NOT NULL,
    spiffe_id       text        NOT NULL,
    issued_at       timestamptz NOT NULL DEFAULT now(),
    not_after       timestamptz NOT NULL,
    CONSTRAINT issued_svids_pkey PRIMARY KEY (org_id, serial),
    CONSTRAINT issued_svids_ca_fkey FOREIGN KEY (org_id, ca_id) REFERENCES mesh_cas (org_id, id) ON DELETE CASCADE
);
CREATE INDEX issued_svids_live ON issued_svids (org_id, ca_id, not_after);

DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['mesh_cas', 'join_tokens', 'issued_svids'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format(
            'CREATE POLICY %I ON %I USING (org_id = trellis_current_org()) '
            'WITH CHECK (org_id = trellis_current_org())', t || '_tenant', t);
    END LOOP;
END
$$;

-- A directory that resolves a trust domain (from a client certificate, before any tenant
-- is set) to its mesh. It holds ids only; what they point at stays behind row-level
-- security. (Join tokens carry their organization, as API tokens do.)
CREATE TABLE trust_domain_directory (
    trust_domain    text        NOT NULL,
    org_id          uuid        NOT NULL,
    mesh_id         uuid        NOT NULL,
    CONSTRAINT trust_domain_directory_pkey PRIMARY KEY (trust_domain),
    CONSTRAINT trust_domain_directory_mesh_fkey FOREIGN KEY (org_id, mesh_id)
        REFERENCES meshes (org_id, id) ON DELETE CASCADE
);
DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['trust_domain_directory'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format('CREATE POLICY %I ON %I FOR SELECT USING (true)', t || '_lookup', t);
        EXECUTE format('CREATE POLICY %I ON %I FOR INSERT WITH CHECK (org_id = trellis_current_org())',
            t || '_insert', t);
            EXECUTE format('CREATE POLICY %I ON %I FOR DELETE USING (org_id = trellis_current_org())',
            t || '_delete', t);
    END LOOP;
END
$$;

-- Every mesh, existing or new, is listed under its trust domain.
INSERT INTO trust_domain_directory (trust_domain, org_id, mesh_id)
    SELECT trust_domain, org_id, id FROM meshes;
CREATE FUNCTION trellis_mesh_listed() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    INSERT INTO trust_domain_directory (trust_domain, org_id, mesh_id)
        VALUES (NEW.trust_domain, NEW.org_id, NEW.id);
    RETURN NULL;
END
$$;
CREATE TRIGGER meshes_listed AFTER INSERT ON meshes FOR EACH ROW EXECUTE FUNCTION trellis_mesh_listed();


-- The platform CA: one row, not a tenant's.
CREATE TABLE platform_ca (
    id              smallint    NOT NULL DEFAULT 1,
    cert_der        bytea       NOT NULL,
    key_kek_id      text        NOT NULL,
    key_nonce       bytea       NOT NULL,
    key_ciphertext  bytea       NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT platform_ca_pkey PRIMARY KEY (id),
    CONSTRAINT platform_ca_single CHECK (id = 1)
);

GRANT SELECT, INSERT, UPDATE, DELETE ON mesh_cas, join_tokens, issued_svids TO trellis_app;
GRANT SELECT, INSERT, DELETE ON trust_domain_directory TO trellis_app;
GRANT SELECT, INSERT, UPDATE ON platform_ca TO trellis_app;

-- Propagation status: the mesh revision each resource write made, and the newest revision
-- each dataplane is fully in sync with. A dataplane at or past a resource's revision has it.
ALTER TABLE resources ADD COLUMN mesh_revision bigint;
ALTER TABLE dataplanes ADD COLUMN synced_revision bigint;
CREATE FUNCTION trellis_resource_revision() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    -- The AFTER trigger below bumps the mesh revision by one for this row.
    NEW.mesh_revision := (SELECT revision + 1 FROM meshes WHERE org_id = NEW.org_id AND id = NEW.mesh_id);
    RETURN NEW;
END
$$;
CREATE TRIGGER resources_revision BEFORE INSERT OR UPDATE ON resources
    FOR EACH ROW EXECUTE FUNCTION trellis_resource_revision();

-- What was sent, by content: each distinct version of a type's resources in a mesh, in the
-- readable form the config dump shows. Ledger lines point here by (type_url, sent_version),
-- so proxies that got the same content share one row.
CREATE TABLE xds_configs (
    org_id          uuid        NOT NULL,
    mesh_id         uuid        NOT NULL,
    type_url        text        NOT NULL,
    version         text        NOT NULL,
    resources       jsonb       NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT xds_configs_pkey PRIMARY KEY (org_id, mesh_id, type_url, version),
    CONSTRAINT xds_configs_mesh_fkey FOREIGN KEY (org_id, mesh_id) REFERENCES meshes (org_id, id) ON DELETE CASCADE
);
ALTER TABLE xds_configs ENABLE ROW LEVEL SECURITY;
ALTER TABLE xds_configs FORCE ROW LEVEL SECURITY;
CREATE POLICY xds_configs_tenant ON xds_configs USING (org_id = trellis_current_org())
    WITH CHECK (org_id = trellis_current_org());
GRANT SELECT, INSERT, DELETE ON xds_configs TO trellis_app;

-- Sent contents no ledger line refers to any more, older than `keep` (a leader duty).
CREATE FUNCTION trellis_prune_xds_configs(keep interval) RETURNS bigint
    LANGUAGE plpgsql
    AS $$
DECLARE
    o uuid;
    n bigint := 0;
    k bigint;
BEGIN
    FOR o IN SELECT id FROM organizations LOOP
        PERFORM set_config('app.org_id', o::text, true);
        DELETE FROM xds_configs c WHERE c.created_at < now() - keep AND NOT EXISTS (
            SELECT 1 FROM xds_ledger l JOIN dataplanes d ON d.org_id = l.org_id AND d.id = l.dataplane_id
            WHERE d.mesh_id = c.mesh_id AND l.type_url = c.type_url AND l.sent_version = c.version);
        GET DIAGNOSTICS k = ROW_COUNT;
        n := n + k;
    END LOOP;
    PERFORM set_config('app.org_id', '', true);
    RETURN n;
END
$$;
GRANT EXECUTE ON FUNCTION trellis_prune_xds_configs(interval) TO trellis_app;
