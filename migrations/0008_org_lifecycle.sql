-- The life of an organization: the no-IdP mode's local admin bound to the organization it
-- created (by id, never by slug), and deleting an organization, whose audit trail outlives
-- it for a retention period.

-- The local admin and the organization it created. Installation state, like platform_ca
-- (one row, no tenant's data): the server reads it before any tenant is chosen. A slug can
-- be taken by any tenant once its organization renames itself or is deleted, so the
-- binding is the organization's id. NULL once that organization is deleted: the next local
-- login then creates a new one.
CREATE TABLE local_admin (
    id           smallint    NOT NULL DEFAULT 1,
    user_id      uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_org  uuid        REFERENCES organizations (id) ON DELETE SET NULL,
    bound_at     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT local_admin_pkey PRIMARY KEY (id),
    CONSTRAINT local_admin_single CHECK (id = 1)
);
GRANT SELECT, INSERT, UPDATE ON local_admin TO trellis_app;

-- The audit trail outlives its organization: who deleted it, and what happened before, is
-- what an investigation of a mistaken or malicious deletion needs. Its rows stay behind
-- row-level security under an id that no organization will have again (ids are random), so
-- no API caller can read them; the leader deletes them once the retention has passed
-- (`trellis_purge_deleted_orgs`).
ALTER TABLE audit_events DROP CONSTRAINT audit_events_org_id_fkey;

-- When each organization was deleted. Readable by the schema owner only.
CREATE TABLE deleted_organizations (
    id          uuid        NOT NULL,
    deleted_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT deleted_organizations_pkey PRIMARY KEY (id)
);

CREATE FUNCTION trellis_org_deleted() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = public
    AS $$
BEGIN
    INSERT INTO deleted_organizations (id) VALUES (OLD.id);
    RETURN NULL;
END
$$;
CREATE TRIGGER organizations_deleted AFTER DELETE ON organizations
    FOR EACH ROW EXECUTE FUNCTION trellis_org_deleted();

-- Deletes the audit trail of organizations deleted longer than `keep` ago, one tenant at a
-- time (the WHERE holds even for an owner that bypasses row-level security). Returns how
-- many organizations were purged. A leader duty.
CREATE FUNCTION trellis_purge_deleted_orgs(keep interval) RETURNS bigint
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = public
    AS $$
DECLARE
    o uuid;
    n bigint := 0;
BEGIN
    FOR o IN SELECT id FROM deleted_organizations WHERE deleted_at < now() - keep LOOP
        PERFORM set_config('app.org_id', o::text, true);
        DELETE FROM audit_events WHERE org_id = o;
        DELETE FROM deleted_organizations WHERE id = o;
        n := n + 1;
    END LOOP;
    PERFORM set_config('app.org_id', '', true);
    RETURN n;
END
$$;
REVOKE ALL ON FUNCTION trellis_purge_deleted_orgs(interval) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION trellis_purge_deleted_orgs(interval) TO trellis_app;
