-- A write's propagation, waited on: which proxies have not applied it yet, and whether one
-- of them rejected it. Read by a waiting write as a statement of its own, polled after its
-- commit, so that no connection or transaction is held while the proxies catch up.

-- The online proxies of mesh `p_mesh` that a resource targeting `p_target` configures (the
-- same selection as `trellis_propagation`) and that have not applied mesh revision
-- `p_revision`, at most `p_limit`, rejecting ones first, then by service and node. Each with
-- its outstanding rejection, if any (the first by type URL); `rejected` says that this
-- rejection is of a response made at or after the revision, which the proxy was sent last:
-- the proxy refused this write, as opposed to an older one that the write may yet repair.
CREATE FUNCTION trellis_propagation_waiting(
    p_mesh uuid, p_revision bigint, p_callers boolean, p_instances boolean, p_target text, p_limit integer
)
RETURNS TABLE (
    service text, node_id text, last_seen_at timestamptz,
    type_url text, nacked_version text, nack_error text, nacked_at timestamptz, rejected boolean
)
LANGUAGE sql STABLE AS $$
    WITH waiting AS MATERIALIZED (
        SELECT d.org_id, d.id, d.service, d.node_id, d.last_seen_at
        FROM dataplanes d
        WHERE d.mesh_id = p_mesh AND d.online
          AND NOT coalesce(d.synced_revision >= p_revision, false)
          AND (p_target IS NULL
               OR (p_callers AND p_target = ANY (d.calls))
               OR (p_instances AND d.serves AND d.service = p_target))
    )
    SELECT w.service, w.node_id, w.last_seen_at,
           n.type_url, n.nacked_version, n.nack_error, n.nacked_at, coalesce(n.rejected, false)
    FROM waiting w
    LEFT JOIN LATERAL (
        SELECT l.type_url, l.nacked_version, l.nack_error, l.nacked_at,
               coalesce(l.mesh_revision >= p_revision AND l.nacked_version = l.sent_version, false) AS rejected
        FROM xds_ledger l
        WHERE l.org_id = w.org_id AND l.dataplane_id = w.id
          AND l.nacked_version IS NOT NULL AND l.nack_error IS NOT NULL
        ORDER BY 5 DESC, l.type_url
        LIMIT 1
    ) n ON true
    ORDER BY coalesce(n.rejected, false) DESC, w.service, w.node_id
    LIMIT p_limit
$$;

-- `trellis_propagation`'s counts and `trellis_propagation_waiting`'s proxies in the tenant
-- `p_org`, as one statement of its own.
CREATE FUNCTION trellis_tenant_propagation_wait(
    p_org uuid, p_mesh uuid, p_revision bigint, p_callers boolean, p_instances boolean, p_target text,
    p_limit integer
)
RETURNS TABLE (
    proxies bigint, applied bigint, rejected bigint,
    nack_type_urls text[], nack_versions text[], nack_errors text[],
    w_services text[], w_nodes text[], w_last_seen timestamptz[], w_type_urls text[],
    w_versions text[], w_errors text[], w_nacked_at timestamptz[], w_rejected boolean[]
)
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM set_config('app.org_id', p_org::text, true);
    RETURN QUERY
        WITH w AS MATERIALIZED (
            SELECT f.*, row_number() OVER (ORDER BY f.rejected DESC, f.service, f.node_id) AS i
            FROM trellis_propagation_waiting(p_mesh, p_revision, p_callers, p_instances, p_target, p_limit) f
        )
        SELECT p.*,
               ARRAY(SELECT w.service FROM w ORDER BY w.i), ARRAY(SELECT w.node_id FROM w ORDER BY w.i),
               ARRAY(SELECT w.last_seen_at FROM w ORDER BY w.i), ARRAY(SELECT w.type_url FROM w ORDER BY w.i),
               ARRAY(SELECT w.nacked_version FROM w ORDER BY w.i), ARRAY(SELECT w.nack_error FROM w ORDER BY w.i),
               ARRAY(SELECT w.nacked_at FROM w ORDER BY w.i), ARRAY(SELECT w.rejected FROM w ORDER BY w.i)
        FROM trellis_propagation(p_mesh, p_revision, p_callers, p_instances, p_target) p;
END
$$;

GRANT EXECUTE ON FUNCTION
    trellis_propagation_waiting(uuid, bigint, boolean, boolean, text, integer),
    trellis_tenant_propagation_wait(uuid, uuid, bigint, boolean, boolean, text, integer)
TO trellis_app;
