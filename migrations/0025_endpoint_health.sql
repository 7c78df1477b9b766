-- What each proxy last reported of the endpoints of its upstream clusters: Envoy's cluster
-- gauges (membership total, healthy, degraded; outlier-detection ejections active), pushed
-- through MetricsService by Envoy and the agent alike. One row per reporting proxy (its
-- node id in the mesh, its service from the certificate) and destination cluster (service,
-- port, subset), holding the latest values: a gauge is replaced, never summed. Service health
-- reads the rows of online proxies reported recently; the leader deletes the stale ones. A
-- tenant table like every other: row-level security forced, the tenant per transaction.

CREATE TABLE endpoint_health (
    org_id              uuid        NOT NULL,
    mesh_id             uuid        NOT NULL,
    -- The reporting proxy: the node id its stream named, its service from its certificate.
    node_id             text        NOT NULL,
    source_service      text        NOT NULL,
    destination_service text        NOT NULL,
    destination_port    integer     NOT NULL,
    -- The cluster's subset as `key=value,…` (empty: the whole service).
    destination_subset  text        NOT NULL,
    total               bigint      NOT NULL,
    healthy             bigint      NOT NULL,
    degraded            bigint      NOT NULL,
    ejected             bigint      NOT NULL,
    reported_at         timestamptz NOT NULL,
    CONSTRAINT endpoint_health_pkey PRIMARY KEY
        (org_id, mesh_id, node_id, destination_service, destination_port, destination_subset),
    CONSTRAINT endpoint_health_mesh_fkey FOREIGN KEY (org_id, mesh_id)
        REFERENCES meshes (org_id, id) ON DELETE CASCADE,
    CONSTRAINT endpoint_health_counts_check
        CHECK (total >= 0 AND healthy >= 0 AND degraded >= 0 AND ejected >= 0)
);

-- Service health reads one destination service's rows.
CREATE INDEX endpoint_health_by_destination ON endpoint_health (org_id, mesh_id, destination_service);

ALTER TABLE endpoint_health ENABLE ROW LEVEL SECURITY;
ALTER TABLE endpoint_health FORCE ROW LEVEL SECURITY;
CREATE POLICY endpoint_health_tenant ON endpoint_health
    USING (org_id = trellis_current_org()) WITH CHECK (org_id = trellis_current_org());

-- Deletes the reports older than `keep`, tenant by tenant through RLS. Returns how many rows
-- went. A leader duty.
CREATE FUNCTION trellis_endpoint_health_expire(keep interval) RETURNS bigint
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = public
    AS $$
DECLARE
    o uuid;
    n bigint := 0;
    k bigint;
BEGIN
    FOR o IN SELECT id FROM organizations LOOP
        PERFORM set_config('app.org_id', o::text, true);
        DELETE FROM endpoint_health WHERE org_id = o AND reported_at < now() - keep;
        GET DIAGNOSTICS k = ROW_COUNT;
        n := n + k;
    END LOOP;
    PERFORM set_config('app.org_id', '', true);
    RETURN n;
END
$$;
REVOKE ALL ON FUNCTION trellis_endpoint_health_expire(interval) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION trellis_endpoint_health_expire(interval) TO trellis_app;

GRANT SELECT, INSERT, UPDATE, DELETE ON endpoint_health TO trellis_app;
