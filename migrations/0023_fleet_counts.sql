-- A write's propagation without reading the fleet: how many online proxies a resource
-- configures is kept as counts per mesh and per service, by PostgreSQL, as dataplanes
-- register, go offline, change what they were sent or are deleted. Right after a write
-- commits, the proxies that applied its revision and those with a rejection outstanding are
-- few, and indexes find them (`dataplanes_synced`, `xds_ledger_rejected`): a PUT reads a
-- handful of rows whether its mesh has no proxies or thousands.
--
-- The price is paid where the fleet changes, not where configuration is written: a dataplane
-- that registers, goes offline or is sent other services writes its mesh's counts row and a
-- row per service that moved, and two ledger batches changing one mesh's proxies queue on
-- that row until the first commits (they already did on the mesh row for registrations). A
-- sync (`synced_revision`) now updates an indexed column. Heartbeats cost what they did.

-- Online proxies per mesh (what a resource without a target configures).
CREATE TABLE dataplane_counts (
    org_id   uuid   NOT NULL,
    mesh_id  uuid   NOT NULL,
    online   bigint NOT NULL DEFAULT 0,
    CONSTRAINT dataplane_counts_pkey PRIMARY KEY (org_id, mesh_id),
    CONSTRAINT dataplane_counts_mesh_fkey FOREIGN KEY (org_id, mesh_id)
        REFERENCES meshes (org_id, id) ON DELETE CASCADE
);

-- Per mesh and service, online proxies that were sent its caller side (`service` is in their
-- `calls`), that are its instances and were sent its inbound side (`serves`), and that are
-- both (an instance calling its own service), so that "callers or instances" is counted once.
CREATE TABLE dataplane_service_counts (
    org_id        uuid   NOT NULL,
    mesh_id       uuid   NOT NULL,
    service       text   NOT NULL,
    callers       bigint NOT NULL DEFAULT 0,
    instances     bigint NOT NULL DEFAULT 0,
    self_callers  bigint NOT NULL DEFAULT 0,
    CONSTRAINT dataplane_service_counts_pkey PRIMARY KEY (org_id, mesh_id, service),
    CONSTRAINT dataplane_service_counts_mesh_fkey FOREIGN KEY (org_id, mesh_id)
        REFERENCES meshes (org_id, id) ON DELETE CASCADE
);

DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['dataplane_counts', 'dataplane_service_counts'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format(
            'CREATE POLICY %I ON %I USING (org_id = trellis_current_org()) '
            'WITH CHECK (org_id = trellis_current_org())', t || '_tenant', t);
    END LOOP;
END
$$;

-- The proxies that applied a revision: none yet right after a write, found without a scan.
CREATE INDEX dataplanes_synced ON dataplanes (org_id, mesh_id, synced_revision) WHERE online;

-- Whether dataplane `d` is one a resource targeting `p_target` configures, as a caller of it
-- and/or one of its instances (a NULL target configures every proxy); online or not. The
-- counts above hold the same rule; `store_fleet_counts.rs` shows that they agree.
CREATE FUNCTION trellis_configures(
    d dataplanes, p_callers boolean, p_instances boolean, p_target text
) RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$
    SELECT p_target IS NULL
        OR (p_callers AND p_target = ANY (d.calls))
        OR (p_instances AND d.serves AND d.service = p_target)
$$;

-- What one dataplane row adds to the counts while online: one row per service it calls
-- (callers), and for its own service if it serves it (instances, and self_callers when it
-- also calls it).
CREATE FUNCTION trellis_dataplane_share(d dataplanes)
RETURNS TABLE (service text, callers bigint, instances bigint, self_callers bigint)
LANGUAGE sql IMMUTABLE AS $$
    SELECT c.service, sum(c.callers)::bigint, sum(c.instances)::bigint, sum(c.self_callers)::bigint
    FROM (
        SELECT s AS service, 1 AS callers, 0 AS instances, 0 AS self_callers
        FROM (SELECT DISTINCT unnest(d.calls)) AS x(s)
        UNION ALL
        SELECT d.service, 0, 1, CASE WHEN d.service = ANY (d.calls) THEN 1 ELSE 0 END
        WHERE d.serves
    ) c
    WHERE d.online
    GROUP BY c.service
$$;

-- Moves the counts from what dataplane row `old` added (none: NULL, a new row) to what row
-- `new` adds (none: NULL, a deleted row). The mesh's `dataplane_counts` row is written first,
-- even when its count does not move, so that writers of one mesh's counts queue on that row
-- and then take its service rows in one order (by service): they never deadlock on them. A
-- dataplane deleted with its mesh changes nothing.
CREATE FUNCTION trellis_recount_dataplane(old dataplanes, new dataplanes) RETURNS void
    LANGUAGE plpgsql
    AS $$
BEGIN
    INSERT INTO dataplane_counts AS c (org_id, mesh_id, online)
    SELECT x.org_id, x.mesh_id, sum(x.delta)
    FROM (VALUES (old.org_id, old.mesh_id, CASE WHEN old.online THEN -1 ELSE 0 END),
                 (new.org_id, new.mesh_id, CASE WHEN new.online THEN 1 ELSE 0 END)) AS x(org_id, mesh_id, delta)
    WHERE EXISTS (SELECT 1 FROM meshes m WHERE m.org_id = x.org_id AND m.id = x.mesh_id)
    GROUP BY x.org_id, x.mesh_id
    ORDER BY x.mesh_id
    ON CONFLICT ON CONSTRAINT dataplane_counts_pkey DO UPDATE SET online = c.online + EXCLUDED.online;

    INSERT INTO dataplane_service_counts AS c (org_id, mesh_id, service, callers, instances, self_callers)
    SELECT s.org_id, s.mesh_id, s.service, sum(s.callers), sum(s.instances), sum(s.self_callers)
    FROM (
        SELECT new.org_id, new.mesh_id, n.service, n.callers, n.instances, n.self_callers
        FROM trellis_dataplane_share(new) n
        UNION ALL
        SELECT old.org_id, old.mesh_id, o.service, -o.callers, -o.instances, -o.self_callers
        FROM trellis_dataplane_share(old) o
    ) AS s(org_id, mesh_id, service, callers, instances, self_callers)
    WHERE EXISTS (SELECT 1 FROM meshes m WHERE m.org_id = s.org_id AND m.id = s.mesh_id)
    GROUP BY s.org_id, s.mesh_id, s.service
    HAVING sum(s.callers) <> 0 OR sum(s.instances) <> 0 OR sum(s.self_callers) <> 0
    ORDER BY s.mesh_id, s.service
    ON CONFLICT ON CONSTRAINT dataplane_service_counts_pkey DO UPDATE SET
        callers = c.callers + EXCLUDED.callers,
        instances = c.instances + EXCLUDED.instances,
        self_callers = c.self_callers + EXCLUDED.self_callers;
END
$$;

-- The dataplanes' one trigger function (0005's, which bumps the mesh revision when what a
-- dataplane serves changes), now counting first: every write of a dataplane takes its mesh's
-- counts row before the mesh row, whatever it changes, so that two ledger batches of one mesh
-- (a registration in one, a proxy going offline after another's calls changed in the other)
-- take the two rows in the same order. In a trigger, OLD is NULL for an insert and NEW for a
-- delete.
CREATE OR REPLACE FUNCTION trellis_dataplane_written() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
DECLARE
    r record;
BEGIN
    PERFORM trellis_recount_dataplane(OLD, NEW);
    IF TG_OP = 'UPDATE'
       AND (OLD.online, OLD.address, OLD.ports, OLD.tags, OLD.zone, OLD.service)
           IS NOT DISTINCT FROM (NEW.online, NEW.address, NEW.ports, NEW.tags, NEW.zone, NEW.service) THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'DELETE' THEN
        r := OLD;
    ELSE
        r := NEW;
    END IF;
    UPDATE meshes SET updated_at = now() WHERE org_id = r.org_id AND id = r.mesh_id;
    RETURN NULL;
END
$$;

-- Fired as before, and also when what a dataplane was sent changes (`calls`, `serves`: no
-- mesh revision, but the counts move). Heartbeats and syncs fire nothing.
DROP TRIGGER dataplanes_changed ON dataplanes;
CREATE TRIGGER dataplanes_changed AFTER UPDATE ON dataplanes
    FOR EACH ROW
    WHEN ((OLD.online, OLD.address, OLD.ports, OLD.tags, OLD.zone, OLD.service, OLD.calls, OLD.serves, OLD.mesh_id)
          IS DISTINCT FROM (NEW.online, NEW.address, NEW.ports, NEW.tags, NEW.zone, NEW.service, NEW.calls, NEW.serves, NEW.mesh_id))
    EXECUTE FUNCTION trellis_dataplane_written();

-- The counts of the dataplanes already there, tenant by tenant (row-level security applies
-- to the schema's owner too).
DO $$
DECLARE o uuid;
BEGIN
    FOR o IN SELECT id FROM organizations LOOP
        PERFORM set_config('app.org_id', o::text, true);
        INSERT INTO dataplane_counts (org_id, mesh_id, online)
        SELECT d.org_id, d.mesh_id, count(*) FILTER (WHERE d.online)
        FROM dataplanes d GROUP BY d.org_id, d.mesh_id;
        INSERT INTO dataplane_service_counts (org_id, mesh_id, service, callers, instances, self_callers)
        SELECT d.org_id, d.mesh_id, s.service, sum(s.callers), sum(s.instances), sum(s.self_callers)
        FROM dataplanes d CROSS JOIN LATERAL trellis_dataplane_share(d) s
        GROUP BY d.org_id, d.mesh_id, s.service;
    END LOOP;
    PERFORM set_config('app.org_id', '', true);
END
$$;

-- Same signature and answers as before (0012, 0018): the count from the counts above; the
-- proxies that applied `p_revision` through `dataplanes_synced`; the rejections outstanding
-- from `xds_ledger_rejected`, each joined to its dataplane.
CREATE OR REPLACE FUNCTION trellis_propagation(
    p_mesh uuid, p_revision bigint, p_callers boolean, p_instances boolean, p_target text
)
RETURNS TABLE (
    proxies bigint, applied bigint, rejected bigint,
    nack_type_urls text[], nack_versions text[], nack_errors text[]
)
LANGUAGE plpgsql STABLE AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH rejections AS MATERIALIZED (
        SELECT DISTINCT ON (d.id) d.service, d.node_id, l.type_url, l.nacked_version, l.nack_error
        FROM xds_ledger l
        JOIN dataplanes d ON d.org_id = l.org_id AND d.id = l.dataplane_id
        WHERE l.nacked_version IS NOT NULL AND l.nack_error IS NOT NULL
          AND d.mesh_id = p_mesh AND d.online
          AND NOT coalesce(d.synced_revision >= p_revision, false)
          AND trellis_configures(d, p_callers, p_instances, p_target)
        ORDER BY d.id, l.type_url
    ), shown AS (
        SELECT * FROM rejections ORDER BY service, node_id LIMIT 5
    )
    SELECT CASE WHEN p_target IS NULL THEN
                coalesce((SELECT c.online FROM dataplane_counts c WHERE c.mesh_id = p_mesh), 0)
           ELSE
                coalesce((SELECT CASE WHEN p_callers THEN s.callers ELSE 0 END
                                 + CASE WHEN p_instances THEN s.instances ELSE 0 END
                                 - CASE WHEN p_callers AND p_instances THEN s.self_callers ELSE 0 END
                          FROM dataplane_service_counts s
                          WHERE s.mesh_id = p_mesh AND s.service = p_target), 0)
           END,
           (SELECT count(*) FROM dataplanes d
            WHERE d.mesh_id = p_mesh AND d.online AND d.synced_revision >= p_revision
              AND trellis_configures(d, p_callers, p_instances, p_target)),
           (SELECT count(*) FROM rejections),
           ARRAY(SELECT type_url FROM shown ORDER BY service, node_id),
           ARRAY(SELECT nacked_version FROM shown ORDER BY service, node_id),
           ARRAY(SELECT nack_error FROM shown ORDER BY service, node_id);
END
$$;

-- 0014's proxies still waiting for a revision, unchanged but for the rule, now written once.
CREATE OR REPLACE FUNCTION trellis_propagation_waiting(
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
          AND trellis_configures(d, p_callers, p_instances, p_target)
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

GRANT SELECT, INSERT, UPDATE ON dataplane_counts, dataplane_service_counts TO trellis_app;
GRANT EXECUTE ON FUNCTION
    trellis_configures(dataplanes, boolean, boolean, text),
    trellis_dataplane_share(dataplanes),
    trellis_recount_dataplane(dataplanes, dataplanes)
TO trellis_app;
