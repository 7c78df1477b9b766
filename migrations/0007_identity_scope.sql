-- What an issued identity is bounded by, and how a trust domain is looked up.

-- 1. The issuance record carries the identity's bounds: its service, and the tags of the join
--    token it descends from (a renewal copies both from the SVID it renews). A record that is
--    revoked no longer authenticates.
ALTER TABLE issued_svids ADD COLUMN service text NOT NULL DEFAULT '';
ALTER TABLE issued_svids ADD COLUMN tags jsonb NOT NULL DEFAULT '{}'::jsonb;
ALTER TABLE issued_svids ADD COLUMN revoked_at timestamptz;
ALTER TABLE issued_svids ADD CONSTRAINT issued_svids_tags_check CHECK (jsonb_typeof(tags) = 'object');
ALTER TABLE issued_svids ALTER COLUMN service DROP DEFAULT;
-- Records written before this migration: the service is the last segment of the SPIFFE id
-- (`…/ns/<mesh>/sa/<service>`). The owner sees tenant rows only with a tenant set.
DO $$
DECLARE o uuid;
BEGIN
    FOR o IN SELECT id FROM organizations LOOP
        PERFORM set_config('app.org_id', o::text, true);
        UPDATE issued_svids SET service = coalesce(substring(spiffe_id FROM '/sa/([^/]+)$'), '');
    END LOOP;
    PERFORM set_config('app.org_id', '', true);
END
$$;
CREATE INDEX issued_svids_service ON issued_svids (org_id, mesh_id, service) WHERE revoked_at IS NULL;

-- 2. Deleting a service revokes its join tokens and its live SVIDs, in the transaction that
--    deletes it: a service made again under the same name starts with no identity.
CREATE FUNCTION trellis_service_deleted() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    UPDATE join_tokens SET revoked_at = now()
        WHERE org_id = OLD.org_id AND mesh_id = OLD.mesh_id AND service = OLD.name AND revoked_at IS NULL;
    UPDATE issued_svids SET revoked_at = now()
        WHERE org_id = OLD.org_id AND mesh_id = OLD.mesh_id AND service = OLD.name AND revoked_at IS NULL
          AND not_after > now();
    RETURN NULL;
END
$$;
CREATE TRIGGER resources_service_deleted AFTER DELETE ON resources
    FOR EACH ROW WHEN (OLD.kind = 'Service') EXECUTE FUNCTION trellis_service_deleted();

-- 3. The trust-domain directory is no longer listable: the server role resolves one exact
--    trust domain through `trellis_mesh_of_trust_domain` and cannot read the table, so with
--    no tenant set it sees no organization's ids or trust domains. It still lists its own
--    meshes (the insert trigger) and loses them with them (the foreign key's cascade).
DROP POLICY trust_domain_directory_lookup ON trust_domain_directory;
REVOKE SELECT ON trust_domain_directory FROM trellis_app;
-- The table is FORCEd, so the function's owner (who runs it) needs a policy of its own.
CREATE POLICY trust_domain_directory_definer ON trust_domain_directory FOR SELECT TO CURRENT_USER
    USING (true);
CREATE FUNCTION trellis_mesh_of_trust_domain(wanted text) RETURNS TABLE (org_id uuid, mesh_id uuid)
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS $$
    SELECT d.org_id, d.mesh_id FROM public.trust_domain_directory d WHERE d.trust_domain = wanted
$$;
REVOKE ALL ON FUNCTION trellis_mesh_of_trust_domain(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION trellis_mesh_of_trust_domain(text) TO trellis_app;
