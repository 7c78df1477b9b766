-- Foundation schema: tenants, accounts, meshes, mesh-scoped configuration, audit.
--
-- Tenancy rules (see ARCHITECTURE.md):
--   * every tenant table has `org_id uuid NOT NULL`, a composite key starting with org_id,
--     and row-level security ENABLED and FORCED;
--   * the tenant is chosen per transaction with set_config('app.org_id', <uuid>, true);
--   * with no tenant chosen, `trellis_current_org()` is NULL and tenant tables show nothing.
-- The server connects as `trellis_app`, which owns nothing and cannot bypass RLS.

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'trellis_app') THEN
        CREATE ROLE trellis_app NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS;
    END IF;
END
$$;

-- The tenant of the current transaction, or NULL when none is set. An empty string (what a
-- transaction-local setting reverts to) counts as none.
CREATE FUNCTION trellis_current_org() RETURNS uuid
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $$ SELECT NULLIF(current_setting('app.org_id', true), '')::uuid $$;

-- Organizations are the tenant directory. Anyone may resolve a slug to an id (the slug is
-- the tenant's public handle, like a GitHub organization name); only the tenant itself may
-- create, change or delete its row.
CREATE TABLE organizations (
    id          uuid        NOT NULL,
    slug        text        NOT NULL,
    name        text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT organizations_pkey PRIMARY KEY (id),
    CONSTRAINT organizations_slug_key UNIQUE (slug)
);
ALTER TABLE organizations ENABLE ROW LEVEL SECURITY;
ALTER TABLE organizations FORCE ROW LEVEL SECURITY;
CREATE POLICY organizations_directory ON organizations FOR SELECT USING (true);
CREATE POLICY organizations_insert ON organizations FOR INSERT WITH CHECK (id = trellis_current_org());
CREATE POLICY organizations_update ON organizations FOR UPDATE
    USING (id = trellis_current_org()) WITH CHECK (id = trellis_current_org());
CREATE POLICY organizations_delete ON organizations FOR DELETE USING (id = trellis_current_org());

-- Users are global identities (one per OpenID subject); what a user may see is decided by
-- memberships, which are tenant rows.
CREATE TABLE users (
    id            uuid        NOT NULL DEFAULT gen_random_uuid(),
    oidc_issuer   text        NOT NULL,
    oidc_subject  text        NOT NULL,
    email         text,
    display_name  text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT users_pkey PRIMARY KEY (id),
    CONSTRAINT users_subject_key UNIQUE (oidc_issuer, oidc_subject)
);

CREATE TABLE memberships (
    org_id      uuid        NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    user_id     uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role        text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT memberships_pkey PRIMARY KEY (org_id, user_id),
    CONSTRAINT memberships_role_check CHECK (role IN ('owner', 'admin', 'editor', 'viewer'))
);

CREATE TABLE meshes (
    org_id      uuid        NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    id          uuid        NOT NULL DEFAULT gen_random_uuid(),
    name        text        NOT NULL,
    spec        jsonb       NOT NULL DEFAULT '{}'::jsonb,
    labels      jsonb       NOT NULL DEFAULT '{}'::jsonb,
    generation  bigint      NOT NULL DEFAULT 1,
    -- Bumped on every write of the mesh or of anything in it; the change feed carries it.
    revision    bigint      NOT NULL DEFAULT 1,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT meshes_pkey PRIMARY KEY (org_id, id),
    CONSTRAINT meshes_name_key UNIQUE (org_id, name)
);

-- One typed table for every mesh-scoped configuration resource (services, access policies,
-- routes, circuit breakers, health checks, rate limits). `kind` says which model type `spec`
-- parses into; `version` is the ETag and changes on every write.
CREATE TABLE resources (
    org_id      uuid        NOT NULL,
    id          uuid        NOT NULL DEFAULT gen_random_uuid(),
    mesh_id     uuid        NOT NULL,
    kind        text        NOT NULL,
    name        text        NOT NULL,
    spec        jsonb       NOT NULL,
    labels      jsonb       NOT NULL DEFAULT '{}'::jsonb,
    generation  bigint      NOT NULL DEFAULT 1,
    version     uuid        NOT NULL DEFAULT gen_random_uuid(),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT resources_pkey PRIMARY KEY (org_id, id),
    CONSTRAINT resources_name_key UNIQUE (org_id, mesh_id, kind, name),
    CONSTRAINT resources_mesh_fkey FOREIGN KEY (org_id, mesh_id)
        REFERENCES meshes (org_id, id) ON DELETE CASCADE
);

CREATE TABLE audit_events (
    org_id      uuid        NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    id          bigint      GENERATED ALWAYS AS IDENTITY,
    at          timestamptz NOT NULL DEFAULT now(),
    actor       text        NOT NULL,
    action      text        NOT NULL,
    target      text        NOT NULL,
    request_id  text,
    details     jsonb       NOT NULL DEFAULT '{}'::jsonb,
    CONSTRAINT audit_events_pkey PRIMARY KEY (org_id, id)
);

-- Row-level security on every table that has org_id.
DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['memberships', 'meshes', 'resources', 'audit_events'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format(
            'CREATE POLICY %I ON %I USING (org_id = trellis_current_org()) '
            'WITH CHECK (org_id = trellis_current_org())', t || '_tenant', t);
    END LOOP;
END
$$;

-- Change feed: any write to a mesh or to a resource in it bumps the mesh revision in the
-- same transaction and notifies only the key "<org>/<mesh>/<revision>".
CREATE FUNCTION trellis_notify_mesh(p_org uuid, p_mesh uuid, p_revision bigint) RETURNS void
    LANGUAGE sql
    AS $$ SELECT pg_notify('trellis_mesh_changed', p_org::text || '/' || p_mesh::text || '/' || p_revision::text) $$;

CREATE FUNCTION trellis_mesh_written() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        -- revision 0 tells listeners that the mesh is gone.
        PERFORM trellis_notify_mesh(OLD.org_id, OLD.id, 0);
        RETURN OLD;
    END IF;
    IF TG_OP = 'UPDATE' THEN
        NEW.revision := OLD.revision + 1;
    END IF;
    PERFORM trellis_notify_mesh(NEW.org_id, NEW.id, NEW.revision);
    RETURN NEW;
END
$$;

CREATE TRIGGER meshes_written BEFORE INSERT OR UPDATE OR DELETE ON meshes
    FOR EACH ROW EXECUTE FUNCTION trellis_mesh_written();

CREATE FUNCTION trellis_resource_written() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
DECLARE
    r record;
BEGIN
    IF TG_OP = 'DELETE' THEN
        r := OLD;
    ELSE
        r := NEW;
    END IF;
    -- Touching the mesh row fires meshes_written, which bumps and notifies. A resource that
    -- moves between meshes (never done by the store, but possible in SQL) bumps both.
    UPDATE meshes SET updated_at = now() WHERE org_id = r.org_id AND id = r.mesh_id;
    IF TG_OP = 'UPDATE' AND OLD.mesh_id IS DISTINCT FROM NEW.mesh_id THEN
        UPDATE meshes SET updated_at = now() WHERE org_id = OLD.org_id AND id = OLD.mesh_id;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER resources_written AFTER INSERT OR UPDATE OR DELETE ON resources
    FOR EACH ROW EXECUTE FUNCTION trellis_resource_written();

-- The heads of every mesh of every tenant, as keys only: what the change feed compares
-- against after a reconnect and on its periodic reconcile. It walks the tenants one at a time
-- through the same RLS policies as everything else, and leaves no tenant set behind.
CREATE FUNCTION trellis_mesh_heads() RETURNS TABLE (org_id uuid, mesh_id uuid, revision bigint)
    LANGUAGE plpgsql
    AS $$
DECLARE
    o uuid;
BEGIN
    FOR o IN SELECT id FROM organizations LOOP
        PERFORM set_config('app.org_id', o::text, true);
        RETURN QUERY SELECT m.org_id, m.id, m.revision FROM meshes m;
    END LOOP;
    PERFORM set_config('app.org_id', '', true);
END
$$;

GRANT SELECT, INSERT, UPDATE, DELETE ON organizations, users, memberships, meshes, resources TO trellis_app;
GRANT SELECT, INSERT ON audit_events TO trellis_app;
GRANT EXECUTE ON FUNCTION trellis_current_org(), trellis_mesh_heads() TO trellis_app;
GRANT SELECT ON _sqlx_migrations TO trellis_app;
