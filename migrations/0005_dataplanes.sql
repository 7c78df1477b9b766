-- Dataplanes (proxies registered by their xDS streams) and the propagation ledger.

CREATE TABLE dataplanes (
    org_id          uuid        NOT NULL,
    mesh_id         uuid        NOT NULL,
    id              uuid        NOT NULL DEFAULT gen_random_uuid(),
    -- From the verified certificate: the service; from the node: an instance name.
    service         text        NOT NULL,
    node_id         text        NOT NULL,
    client          text        NOT NULL,
    address         inet,
    ports           integer[]   NOT NULL DEFAULT '{}',
    tags            jsonb       NOT NULL DEFAULT '{}'::jsonb,
    zone            text        NOT NULL DEFAULT '',
    online          boolean     NOT NULL DEFAULT true,
    replica         text,
    connected_at    timestamptz NOT NULL DEFAULT now(),
    last_seen_at    timestamptz NOT NULL DEFAULT now(),
    offline_since   timestamptz,
    CONSTRAINT dataplanes_pkey PRIMARY KEY (org_id, id),
    CONSTRAINT dataplanes_node_key UNIQUE (org_id, mesh_id, node_id),
    CONSTRAINT dataplanes_mesh_fkey FOREIGN KEY (org_id, mesh_id) REFERENCES meshes (org_id, id) ON DELETE CASCADE,
    CONSTRAINT dataplanes_client_check CHECK (client IN ('envoy', 'grpc', 'agent'))
);

-- Per dataplane and type URL: what was sent, what was accepted or rejected, and how long
-- the mesh revision took from commit to ACK.
CREATE TABLE xds_ledger (
    org_id          uuid        NOT NULL,
    dataplane_id    uuid        NOT NULL,
    type_url        text        NOT NULL,
    sent_version    text,
    sent_nonce      text,
    sent_at         timestamptz,
    acked_version   text,
    acked_at        timestamptz,
    nacked_version  text,
    nack_error      text,
    nacked_at       timestamptz,
    mesh_revision   bigint,
    convergence_ms  double precision,
    CONSTRAINT xds_ledger_pkey PRIMARY KEY (org_id, dataplane_id, type_url),
    CONSTRAINT xds_ledger_dataplane_fkey FOREIGN KEY (org_id, dataplane_id)
        REFERENCES dataplanes (org_id, id) ON DELETE CASCADE
);

DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['dataplanes', 'xds_ledger'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format(
            'CREATE POLICY %I ON %I USING (org_id = trellis_current_org()) '
            'WITH CHECK (org_id = trellis_current_org())', t || '_tenant', t);
    END LOOP;
END
$$;

-- A change in what a dataplane serves (it comes or goes, moves, or changes tags or ports)
-- changes its mesh's endpoints: bump the mesh revision through the same change feed.
-- Heartbeats (last_seen_at) do not.
CREATE FUNCTION trellis_dataplane_written() RETURNS trigger
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
    UPDATE meshes SET updated_at = now() WHERE org_id = r.org_id AND id = r.mesh_id;
    RETURN NULL;
END
$$;

CREATE TRIGGER dataplanes_inserted_or_deleted AFTER INSERT OR DELETE ON dataplanes
    FOR EACH ROW EXECUTE FUNCTION trellis_dataplane_written();
CREATE TRIGGER dataplanes_changed AFTER UPDATE ON dataplanes
    FOR EACH ROW
    WHEN ((OLD.online, OLD.address, OLD.ports, OLD.tags, OLD.zone, OLD.service)
          IS DISTINCT FROM (NEW.online, NEW.address, NEW.ports, NEW.tags, NEW.zone, NEW.service))
    EXECUTE FUNCTION trellis_dataplane_written();

-- Removes dataplanes that have been offline longer than the grace period, tenant by tenant
-- through RLS (like trellis_mesh_heads); run by the leader. Returns how many went.
CREATE FUNCTION trellis_prune_dataplanes(grace interval) RETURNS bigint
    LANGUAGE plpgsql
    AS $$
DECLARE
    o uuid;
    n bigint := 0;
    k bigint;
BEGIN
    FOR o IN SELECT id FROM organizations LOOP
        PERFORM set_config('app.org_id', o::text, true);
        DELETE FROM dataplanes WHERE NOT online AND offline_since < now() - grace;
        GET DIAGNOSTICS k = ROW_COUNT;
        n := n + k;
    END LOOP;
    PERFORM set_config('app.org_id', '', true);
    RETURN n;
END
$$;

GRANT SELECT, INSERT, UPDATE, DELETE ON dataplanes, xds_ledger TO trellis_app;
GRANT EXECUTE ON FUNCTION trellis_prune_dataplanes(interval) TO trellis_app;
