-- Telemetry per destination subset: a call routed to `reviews` v2 (a route's weighted
-- backend, the cluster `reviews.shop:9080~version=v2`) is counted apart from one to v1, so
-- that the topology shows how an edge's requests split between versions. The subset is the
-- tags in their joined form (`version=v2`, model::Tags::joined); '' is the whole service.
-- A column of the existing tables: their row-level security covers it.
ALTER TABLE telemetry_edges ADD COLUMN destination_subset text NOT NULL DEFAULT '';
ALTER TABLE telemetry_edges ADD CONSTRAINT telemetry_edges_subset_check
    CHECK (length(destination_subset) <= 2048);
ALTER TABLE telemetry_edges DROP CONSTRAINT telemetry_edges_pkey;
ALTER TABLE telemetry_edges ADD CONSTRAINT telemetry_edges_pkey PRIMARY KEY
    (org_id, mesh_id, resolution_s, bucket_start, source, destination, destination_subset, route,
     response_class);

-- The rollup of 0010_telemetry.sql, keeping the subset.
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
            WHERE parent = CASE r.resolution_s WHEN 60 THEN 'telemetry_edges_1m' ELSE 'telemetry_edges_1h' END;
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
