-- Latency histograms as one exact decimal instead of an array of 73 counts: bucket i's count
-- is in the decimal digits 20·i to 20·i + 19 counted from the right (model::telemetry,
-- `LatencyHistogram::to_packed`). A bucket's count (a u64, below 1.9·10^19) and its sum over
-- any window stay below 10^20, so adding two packed histograms adds them bucket by bucket
-- (nothing carries into the next bucket): reads and rollups merge with `sum()` and
-- writers with `+`, one numeric addition per row where the array took 73 subscripts and 73
-- aggregates (≈ 2 µs a row, most of the time of an hour's read of a 1,000-edge mesh), and
-- the digits are five of PostgreSQL's base-10,000 numeric digits per bucket, leading and
-- trailing empty buckets not stored.
ALTER TABLE telemetry_edges ADD COLUMN latency_packed numeric NOT NULL DEFAULT 0;
ALTER TABLE telemetry_edges ADD CONSTRAINT telemetry_edges_latency_packed_check
    CHECK (latency_packed >= 0 AND scale(latency_packed) = 0 AND latency_packed < 1e1460);

-- The rows written before: each count left-padded to its 20 digits, highest bucket first.
-- The owner sees tenant rows only with a tenant set.
DO $$
DECLARE o uuid;
BEGIN
    FOR o IN SELECT id FROM organizations LOOP
        PERFORM set_config('app.org_id', o::text, true);
        UPDATE telemetry_edges SET latency_packed = (
            SELECT string_agg(lpad(c::text, 20, '0'), '' ORDER BY i DESC)::numeric
            FROM unnest(latency) WITH ORDINALITY AS u(c, i))
        WHERE org_id = o;
    END LOOP;
    PERFORM set_config('app.org_id', '', true);
END
$$;
ALTER TABLE telemetry_edges DROP COLUMN latency;

-- The rollup of 0021_telemetry_ten_minutes.sql, merging the packed histograms.
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
                    bytes, latency_packed, tcp_connections, tcp_bytes)
            SELECT org_id, mesh_id, r.resolution_s,
                   to_timestamp(floor(extract(epoch FROM bucket_start) / r.resolution_s) * r.resolution_s),
                   source, destination, destination_subset, route, response_class,
                   sum(requests)::bigint, sum(successes)::bigint, sum(bytes)::bigint,
                   sum(latency_packed), sum(tcp_connections)::bigint, sum(tcp_bytes)::bigint
            FROM telemetry_edges
            WHERE org_id = o AND resolution_s = r.source_s
              AND bucket_start >= r.done_until AND bucket_start < upto
            GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9
            ON CONFLICT ON CONSTRAINT telemetry_edges_pkey DO UPDATE SET
                requests = e.requests + EXCLUDED.requests,
                successes = e.successes + EXCLUDED.successes,
                bytes = e.bytes + EXCLUDED.bytes,
                latency_packed = e.latency_packed + EXCLUDED.latency_packed,
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

-- Nothing merges arrays any more.
DROP AGGREGATE trellis_sum_buckets(bigint[]);
DROP FUNCTION trellis_add_buckets(bigint[], bigint[]);
