-- Telemetry: what crossed each edge of a mesh per time bucket, and access-log entries
-- (errors, denials, sampled successes). Both are partitioned by time (declarative range
-- partitioning) so that retention drops whole partitions; the leader rolls 10 s buckets up
-- to 1 min and 1 h. Partitions are created and dropped by the schema owner through the
-- SECURITY DEFINER functions below, so the server role still owns no table.

-- Latency is a fixed array of bucket counts (model::telemetry, 73 buckets): histograms merge
-- by adding element by element.
CREATE FUNCTION trellis_add_buckets(a bigint[], b bigint[]) RETURNS bigint[]
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$
    SELECT array_agg(coalesce(x, 0) + coalesce(y, 0) ORDER BY i)
    FROM unnest(a, b) WITH ORDINALITY AS t(x, y, i)
$$;
CREATE AGGREGATE trellis_sum_buckets(bigint[]) (
    SFUNC = trellis_add_buckets,
    STYPE = bigint[],
    PARALLEL = SAFE
);

-- Per mesh, resolution (10, 60 or 3600 seconds), bucket and edge (source service,
-- destination service, route or '' when the sender cannot tell, response class; '-' holds
-- what a sender cannot split by class: TCP figures and per-upstream latency).
CREATE TABLE telemetry_edges (
    org_id           uuid        NOT NULL,
    mesh_id          uuid        NOT NULL,
    resolution_s     integer     NOT NULL,
    bucket_start     timestamptz NOT NULL,
    source           text        NOT NULL,
    destination      text        NOT NULL,
    route            text        NOT NULL DEFAULT '',
    response_class   text        NOT NULL,
    requests         bigint      NOT NULL DEFAULT 0,
    successes        bigint      NOT NULL DEFAULT 0,
    bytes            bigint      NOT NULL DEFAULT 0,
    latency          bigint[]    NOT NULL,
    tcp_connections  bigint      NOT NULL DEFAULT 0,
    tcp_bytes        bigint      NOT NULL DEFAULT 0,
    CONSTRAINT telemetry_edges_pkey PRIMARY KEY
        (org_id, mesh_id, resolution_s, bucket_start, source, destination, route, response_class),
    CONSTRAINT telemetry_edges_mesh_fkey FOREIGN KEY (org_id, mesh_id)
        REFERENCES meshes (org_id, id) ON DELETE CASCADE,
    CONSTRAINT telemetry_edges_class_check
        CHECK (response_class IN ('1xx', '2xx', '3xx', '4xx', '5xx', '-')),
    CONSTRAINT telemetry_edges_latency_check CHECK (cardinality(latency) = 73),
    CONSTRAINT telemetry_edges_counts_check
        CHECK (requests >= 0 AND successes >= 0 AND successes <= requests AND bytes >= 0
               AND tcp_connections >= 0 AND tcp_bytes >= 0)
) PARTITION BY LIST (resolution_s);
CREATE TABLE telemetry_edges_10s PARTITION OF telemetry_edges FOR VALUES IN (10)
    PARTITION BY RANGE (bucket_start);
CREATE TABLE telemetry_edges_1m PARTITION OF telemetry_edges FOR VALUES IN (60)
    PARTITION BY RANGE (bucket_start);
CREATE TABLE telemetry_edges_1h PARTITION OF telemetry_edges FOR VALUES IN (3600)
    PARTITION BY RANGE (bucket_start);

-- One line a proxy logged: who called whom, what, how it ended and, for a denial, the RBAC
-- policy Envoy named. `reporter` (and `mesh_id`) come from the reporting proxy's SVID;
-- the identities are what the proxy logged of the peer's certificate. Partitioned by the
-- time it was received (the proxy's clock only fills `logged_at`).
CREATE TABLE access_log (
    org_id                uuid        NOT NULL,
    mesh_id               uuid        NOT NULL,
    id                    uuid        NOT NULL DEFAULT gen_random_uuid(),
    received_at           timestamptz NOT NULL DEFAULT now(),
    logged_at             timestamptz NOT NULL,
    reporter              text        NOT NULL,
    direction             text        NOT NULL,
    protocol              text        NOT NULL,
    outcome               text        NOT NULL,
    source_service        text,
    source_identity       text,
    source_address        text,
    destination_service   text,
    destination_identity  text,
    method                text,
    authority             text,
    path                  text,
    status                integer,
    response_flags        text        NOT NULL DEFAULT '',
    response_details      text        NOT NULL DEFAULT '',
    rbac_policy           text,
    route                 text,
    upstream_cluster      text,
    duration_ms           double precision,
    bytes_received        bigint,
    bytes_sent            bigint,
    CONSTRAINT access_log_pkey PRIMARY KEY (org_id, received_at, id),
    CONSTRAINT access_log_mesh_fkey FOREIGN KEY (org_id, mesh_id)
        REFERENCES meshes (org_id, id) ON DELETE CASCADE,
    CONSTRAINT access_log_direction_check CHECK (direction IN ('inbound', 'outbound')),
    CONSTRAINT access_log_protocol_check CHECK (protocol IN ('http', 'tcp')),
    CONSTRAINT access_log_outcome_check CHECK (outcome IN ('denied', 'error', 'sampled'))
) PARTITION BY RANGE (received_at);
CREATE INDEX access_log_search ON access_log (org_id, mesh_id, received_at);

DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['telemetry_edges', 'telemetry_edges_10s', 'telemetry_edges_1m',
                             'telemetry_edges_1h', 'access_log'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format(
            'CREATE POLICY %I ON %I USING (org_id = trellis_current_org()) '
            'WITH CHECK (org_id = trellis_current_org())', t || '_tenant', t);
    END LOOP;
END
$$;

-- The range-partitioned tables and the width of their partitions, in seconds.
CREATE TABLE telemetry_partitioning (
    parent   text    NOT NULL,
    width_s  bigint  NOT NULL,
    CONSTRAINT telemetry_partitioning_pkey PRIMARY KEY (parent)
);
INSERT INTO telemetry_partitioning VALUES
    ('telemetry_edges_10s', 3600), ('telemetry_edges_1m', 86400),
    ('telemetry_edges_1h', 2592000), ('access_log', 86400);

-- Creates, for every range-partitioned table, the partition holding `at` if it is missing:
-- named `<parent>_p<start epoch>`, with the parent's row-level security. Safe to race: a
-- partition another session just created is taken as is.
CREATE FUNCTION trellis_telemetry_prepare(at timestamptz) RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = public
    AS $$
DECLARE
    p record;
    start_epoch bigint;
    part text;
BEGIN
    FOR p IN SELECT parent, width_s FROM telemetry_partitioning LOOP
        start_epoch := floor(extract(epoch FROM at) / p.width_s)::bigint * p.width_s;
        part := p.parent || '_p' || start_epoch;
        CONTINUE WHEN to_regclass(part) IS NOT NULL;
        BEGIN
            EXECUTE format('CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)',
                part, p.parent, to_timestamp(start_epoch), to_timestamp(start_epoch + p.width_s));
            EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', part);
            EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', part);
            EXECUTE format(
                'CREATE POLICY %I ON %I USING (org_id = trellis_current_org()) '
                'WITH CHECK (org_id = trellis_current_org())', part || '_tenant', part);
        EXCEPTION WHEN duplicate_table OR unique_violation THEN
            NULL;
        END;
    END LOOP;
END
$$;

-- Drops the partitions that ended before their table's retention (seconds, by parent).
-- Returns how many went. A leader duty.
CREATE FUNCTION trellis_telemetry_expire(keep jsonb) RETURNS bigint
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = public
    AS $$
DECLARE
    p record;
    c record;
    n bigint := 0;
BEGIN
    FOR p IN SELECT parent, width_s FROM telemetry_partitioning WHERE keep ? parent LOOP
        FOR c IN
            SELECT child.relname::text AS name,
                   substring(child.relname FROM '_p([0-9]+)$')::bigint AS start_epoch
            FROM pg_inherits i
            JOIN pg_class child ON child.oid = i.inhrelid
            WHERE i.inhparent = p.parent::regclass
        LOOP
            CONTINUE WHEN c.start_epoch IS NULL;
            IF to_timestamp(c.start_epoch + p.width_s)
                    <= now() - make_interval(secs => (keep ->> p.parent)::double precision) THEN
                EXECUTE format('DROP TABLE %I', c.name);
                n := n + 1;
            END IF;
        END LOOP;
    END LOOP;
    RETURN n;
END
$$;

-- How far each coarser resolution has been rolled up: buckets before `done_until` are final.
CREATE TABLE telemetry_rollups (
    resolution_s  integer     NOT NULL,
    source_s      integer     NOT NULL,
    done_until    timestamptz NOT NULL,
    CONSTRAINT telemetry_rollups_pkey PRIMARY KEY (resolution_s)
);
INSERT INTO telemetry_rollups VALUES
    (60, 10, to_timestamp(floor(extract(epoch FROM now()) / 60) * 60)),
    (3600, 60, to_timestamp(floor(extract(epoch FROM now()) / 3600) * 3600));

-- Rolls finished buckets up (10 s → 1 min → 1 h), tenant by tenant through RLS, at most one
-- partition's width of the coarser table per call; a bucket is finished `lag` after its end
-- (writers flush within it). Returns the rows written. A leader duty.
CREATE FUNCTION trellis_telemetry_rollup(lag interval) RETURNS bigint
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
                    destination, route, response_class, requests, successes, bytes, latency,
                    tcp_connections, tcp_bytes)
            SELECT org_id, mesh_id, r.resolution_s,
                   to_timestamp(floor(extract(epoch FROM bucket_start) / r.resolution_s) * r.resolution_s),
                   source, destination, route, response_class,
                   sum(requests)::bigint, sum(successes)::bigint, sum(bytes)::bigint,
                   trellis_sum_buckets(latency), sum(tcp_connections)::bigint, sum(tcp_bytes)::bigint
            FROM telemetry_edges
            WHERE org_id = o AND resolution_s = r.source_s
              AND bucket_start >= r.done_until AND bucket_start < upto
            GROUP BY 1, 2, 3, 4, 5, 6, 7, 8
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

-- The partitions for now exist from the start; the leader keeps preparing the next ones.
SELECT trellis_telemetry_prepare(now());
SELECT trellis_telemetry_prepare(now() + interval '1 hour');

REVOKE ALL ON FUNCTION trellis_telemetry_prepare(timestamptz), trellis_telemetry_expire(jsonb),
    trellis_telemetry_rollup(interval) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION trellis_telemetry_prepare(timestamptz), trellis_telemetry_expire(jsonb),
    trellis_telemetry_rollup(interval) TO trellis_app;
GRANT SELECT, INSERT, UPDATE ON telemetry_edges TO trellis_app;
GRANT SELECT, INSERT ON access_log TO trellis_app;
