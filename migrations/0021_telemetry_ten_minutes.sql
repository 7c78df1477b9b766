-- A 10-minute rollup level between minutes and hours: the middle of a window reads one row
-- per edge and 10 minutes, so that the last hour of a mesh is about 20 rows per edge (10 s
-- and minute rows at its ends, 10-minute rows between) rather than about 60 minute rows;
-- summing each row's 73 latency buckets is what a read costs. Rolled up from the minutes
-- (hours now from the 10-minute rows), kept as long as the minutes.
CREATE TABLE telemetry_edges_10m PARTITION OF telemetry_edges FOR VALUES IN (600)
    PARTITION BY RANGE (bucket_start);
ALTER TABLE telemetry_edges_10m ENABLE ROW LEVEL SECURITY;
ALTER TABLE telemetry_edges_10m FORCE ROW LEVEL SECURITY;
CREATE POLICY telemetry_edges_10m_tenant ON telemetry_edges_10m
    USING (org_id = trellis_current_org()) WITH CHECK (org_id = trellis_current_org());
INSERT INTO telemetry_partitioning VALUES ('telemetry_edges_10m', 86400);

-- The rollup of 0013_telemetry_subsets.sql, with the 10-minute table's partition width.
CREATE OR REPLACE FUNCTION trellis_telemetry_rollup(lag interval) RETURNS bigint
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = public
    AS $$
DECLARE
    r record;
    upto timestamptz;
    width bigint;
    o uuid;
    n bigint := 0;
    k bigint;
BEGIN
    FOR r IN SELECT * FROM telemetry_rollups ORDER BY resolution_s FOR UPDATE LOOP
        SELECT width_s INTO width FROM telemetry_partitioning
            WHERE parent = CASE r.resolution_s WHEN 60 THEN 'telemetry_edges_1m'
                                               WHEN 600 THEN 'telemetry_edges_10m'
                                               ELSE 'telemetry_edges_1h' END;
        upto := to_timestamp(floor(extract(epoch FROM now() - lag) / r.resolution_s) * r.resolution_s);
        upto := least(upto, r.done_until + make_interval(secs => width),
                      coalesce((SELECT done_until FROM telemetry_rollups WHERE resolution_s = r.source_s), upto));
        CONTINUE WHEN upto <= r.done_until;
        PERFORM trellis_telemetry_prepare(r.done_until);
        PERFORM trellis_telemetry_prepare(upto - interval '1 microsecond');
        FOR o IN SELECT id FROM organizations LOOP
            PERFORM set_config('app.org_id', o::text, true);
            INSERT INTO telemetry_edges AS e (org_id, mesh_id, resolution_s, bucket_start, source,
                    destination, destination_subset, route, response_class, requests, successes,
                    bytes, latency, tcp_connections, tcp_bytes)
            SELECT org_id, mesh_id, r.resolution_s,
                   to_timestamp(floor(extract(epoch FROM bucket_start) / r.resolution_s) * r.resolution_s),
                   source, destination, destination_subset, route, response_class,
                   sum(requests)::bigint, sum(successes)::bigint, sum(bytes)::bigint,
                   trellis_sum_buckets(latency), sum(tcp_connections)::bigint, sum(tcp_bytes)::bigint
            FROM telemetry_edges
            WHERE org_id = o AND resolution_s = r.source_s
              AND bucket_start >= r.done_until AND bucket_start < upto
            GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9
            ON CONFLICT ON CONSTRAINT telemetry_edges_pkey DO UPDATE SET
                requests = e.requests + EXCLUDED.requests,
                successes = e.successes + EXCLUDED.successes,
                bytes = e.bytes + EXCLUDED.bytes,
                latency = trellis_add_buckets(e.latency, EXCLUDED.latency),
                tcp_connections = e.tcp_connections + EXCLUDED.tcp_connections,
                tcp_bytes = e.tcp_bytes + EXCLUDED.tcp_bytes;
            GET DIAGNOSTICS k = ROW_COUNT;
            n := n + k;
        END LOOP;
        PERFORM set_config('app.org_id', '', true);
        UPDATE telemetry_rollups SET done_until = upto WHERE resolution_s = r.resolution_s;
    END LOOP;
    RETURN n;
END
$$;

-- The new level starts at the oldest minutes kept, so that every 10-minute bucket a read
-- takes as final holds its minutes: the leader's next rollups catch up (one day of
-- partitions per call), and until then reads take the minutes. Hours now roll up from the
-- 10-minute rows, and wait for them.
INSERT INTO telemetry_rollups
    SELECT 600, 60, least(
        (SELECT to_timestamp(min(substring(c.relname FROM '_p([0-9]+)$')::bigint))
         FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
         WHERE i.inhparent = 'telemetry_edges_1m'::regclass),
        to_timestamp(floor(extract(epoch FROM done_until) / 600) * 600))
    FROM telemetry_rollups WHERE resolution_s = 60;
UPDATE telemetry_rollups SET source_s = 600 WHERE resolution_s = 3600;
