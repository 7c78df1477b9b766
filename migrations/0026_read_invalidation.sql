-- What a replica's cache of API-token reads must forget: a notification on
-- `trellis_reads_changed` with the organization's id whenever something a cached GET answer
-- holds changes in a way the mesh's own notification (`trellis_mesh_changed`) does not say —
-- a token revoked, expired or deleted, the organization renamed or deleted, and the
-- propagation of the mesh's resources (a proxy registered, gone offline, synced, or a
-- rejection recorded or cleared). PostgreSQL delivers notifications in commit order and folds
-- duplicates within a transaction, so a batch of a thousand ACKs is one notification per
-- organization.

CREATE FUNCTION trellis_reads_changed() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('trellis_reads_changed', OLD.org_id::text);
    ELSE
        PERFORM pg_notify('trellis_reads_changed', NEW.org_id::text);
    END IF;
    RETURN NULL;
END
$$;

-- The same for the organizations table, whose own id is the organization's.
CREATE FUNCTION trellis_org_reads_changed() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    PERFORM pg_notify('trellis_reads_changed', OLD.id::text);
    RETURN NULL;
END
$$;

-- A token's use marks (`last_used_at`) change nothing a reader sees.
CREATE TRIGGER api_tokens_reads_changed AFTER UPDATE ON api_tokens FOR EACH ROW
    WHEN ((OLD.revoked_at, OLD.expires_at, OLD.role, OLD.token_sha256)
          IS DISTINCT FROM (NEW.revoked_at, NEW.expires_at, NEW.role, NEW.token_sha256))
    EXECUTE FUNCTION trellis_reads_changed();
CREATE TRIGGER api_tokens_reads_deleted AFTER DELETE ON api_tokens FOR EACH ROW
    EXECUTE FUNCTION trellis_reads_changed();

CREATE TRIGGER organizations_reads_changed AFTER UPDATE ON organizations FOR EACH ROW
    WHEN ((OLD.slug, OLD.name) IS DISTINCT FROM (NEW.slug, NEW.name))
    EXECUTE FUNCTION trellis_org_reads_changed();
CREATE TRIGGER organizations_reads_deleted AFTER DELETE ON organizations FOR EACH ROW
    EXECUTE FUNCTION trellis_org_reads_changed();

-- What `trellis_propagation` counts; a heartbeat (`last_seen_at`) is not part of it.
CREATE TRIGGER dataplanes_reads_added AFTER INSERT OR DELETE ON dataplanes FOR EACH ROW
    EXECUTE FUNCTION trellis_reads_changed();
CREATE TRIGGER dataplanes_reads_changed AFTER UPDATE ON dataplanes FOR EACH ROW
    WHEN ((OLD.online, OLD.synced_revision, OLD.calls, OLD.serves, OLD.service, OLD.node_id, OLD.mesh_id)
          IS DISTINCT FROM (NEW.online, NEW.synced_revision, NEW.calls, NEW.serves, NEW.service, NEW.node_id, NEW.mesh_id))
    EXECUTE FUNCTION trellis_reads_changed();

CREATE TRIGGER xds_ledger_reads_added AFTER INSERT ON xds_ledger FOR EACH ROW
    WHEN (NEW.nacked_version IS NOT NULL OR NEW.nack_error IS NOT NULL)
    EXECUTE FUNCTION trellis_reads_changed();
CREATE TRIGGER xds_ledger_reads_deleted AFTER DELETE ON xds_ledger FOR EACH ROW
    WHEN (OLD.nacked_version IS NOT NULL OR OLD.nack_error IS NOT NULL)
    EXECUTE FUNCTION trellis_reads_changed();
CREATE TRIGGER xds_ledger_reads_changed AFTER UPDATE ON xds_ledger FOR EACH ROW
    WHEN ((OLD.nacked_version, OLD.nack_error, OLD.type_url)
          IS DISTINCT FROM (NEW.nacked_version, NEW.nack_error, NEW.type_url))
    EXECUTE FUNCTION trellis_reads_changed();
