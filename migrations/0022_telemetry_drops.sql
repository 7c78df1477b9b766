-- Telemetry a tenant sent that was not stored, per mesh, minute and reason (the ingest rate,
-- the series and access-log budgets per 10 s bucket, oversized messages, a lagging or failing
-- writer): what the tenant reads back from its status endpoint and Prometheus exposition. The
-- ingestion replicas add their counts here in the batching writer's transactions; the leader
-- deletes them after 90 days (the longest window a read covers). A tenant table like every
-- other: row-level security forced, the tenant per transaction.

CREATE TABLE telemetry_drops (
    org_id        uuid        NOT NULL,
    mesh_id       uuid        NOT NULL,
    -- The start of the minute the items were dropped in.
    minute        timestamptz NOT NULL,
    reason        text        NOT NULL,
    items         bigint      NOT NULL,
    CONSTRAINT telemetry_drops_pkey PRIMARY KEY (org_id, mesh_id, minute, reason),
    CONSTRAINT telemetry_drops_mesh_fkey FOREIGN KEY (org_id, mesh_id)
        REFERENCES meshes (org_id, id) ON DELETE CASCADE,
    CONSTRAINT telemetry_drops_reason_check
        CHECK (reason IN ('rate_limited', 'series_budget', 'log_budget', 'too_large',
                          'too_many_series', 'queue_full', 'write_failed')),
    CONSTRAINT telemetry_drops_items_check CHECK (items >= 0)
);

-- The leader's retention deletes by minute, tenant by tenant.
CREATE INDEX telemetry_drops_by_minute ON telemetry_drops (org_id, minute);

ALTER TABLE telemetry_drops ENABLE ROW LEVEL SECURITY;
ALTER TABLE telemetry_drops FORCE ROW LEVEL SECURITY;
CREATE POLICY telemetry_drops_tenant ON telemetry_drops
    USING (org_id = trellis_current_org()) WITH CHECK (org_id = trellis_current_org());

-- Deletes the counts of minutes that started before `keep` ago, tenant by tenant through RLS.
-- Returns how many rows went. A leader duty.
CREATE FUNCTION trellis_telemetry_drops_expire(keep interval) RETURNS bigint
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = public
    AS $$
DECLARE
    o uuid;
    n bigint := 0;
    k bigint;
BEGIN
    FOR o IN SELECT id FROM organizations LOOP
        PERFORM set_config('app.org_id', o::text, true);
        DELETE FROM telemetry_drops WHERE org_id = o AND minute < now() - keep;
        GET DIAGNOSTICS k = ROW_COUNT;
        n := n + k;
    END LOOP;
    PERFORM set_config('app.org_id', '', true);
    RETURN n;
END
$$;
REVOKE ALL ON FUNCTION trellis_telemetry_drops_expire(interval) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION trellis_telemetry_drops_expire(interval) TO trellis_app;

GRANT SELECT, INSERT, UPDATE, DELETE ON telemetry_drops TO trellis_app;
