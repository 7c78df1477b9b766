-- Unexpected traffic: after each minute rollup the leader examines the final minutes of every
-- mesh (model::traffic_events) and records a new caller of a service, a burst of denied calls,
-- or an edge whose rate or error rate left its recent range, with the figures that triggered
-- it. A tenant table like every other: row-level security forced, the tenant per transaction.

CREATE TABLE traffic_events (
    org_id       uuid        NOT NULL,
    mesh_id      uuid        NOT NULL,
    id           uuid        NOT NULL DEFAULT gen_random_uuid(),
    kind         text        NOT NULL,
    -- The start of the minute it happened in.
    minute       timestamptz NOT NULL,
    -- The caller; NULL for a burst of denials (its callers are in the evidence).
    source       text,
    destination  text        NOT NULL,
    -- The same event found twice has the same key (model::traffic_events::TrafficEvent::key):
    -- a minute examined again (a retried run, a new leader) records nothing twice.
    event_key    text        NOT NULL,
    evidence     jsonb       NOT NULL,
    detected_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT traffic_events_pkey PRIMARY KEY (org_id, id),
    CONSTRAINT traffic_events_key UNIQUE (org_id, mesh_id, event_key),
    CONSTRAINT traffic_events_mesh_fkey FOREIGN KEY (org_id, mesh_id)
        REFERENCES meshes (org_id, id) ON DELETE CASCADE,
    CONSTRAINT traffic_events_kind_check
        CHECK (kind IN ('new-caller', 'denied-burst', 'rate-jump', 'error-rate-jump')),
    CONSTRAINT traffic_events_names_check
        CHECK (length(destination) <= 253 AND length(coalesce(source, '')) <= 253
               AND length(event_key) <= 600),
    CONSTRAINT traffic_events_evidence_check CHECK (pg_column_size(evidence) <= 16384)
);
-- The API lists a mesh's events newest first (keyset on minute and id); the scans delete
-- those past retention (90 days).
CREATE INDEX traffic_events_by_time ON traffic_events (org_id, mesh_id, minute DESC, id DESC);

ALTER TABLE traffic_events ENABLE ROW LEVEL SECURITY;
ALTER TABLE traffic_events FORCE ROW LEVEL SECURITY;
CREATE POLICY traffic_events_tenant ON traffic_events
    USING (org_id = trellis_current_org()) WITH CHECK (org_id = trellis_current_org());

-- Every edge that carried calls, and when it first and last did, as the scans saw it: the
-- look-back a new caller is judged against (rows not seen for longer are deleted), kept
-- apart so that a scan reads one row per edge rather than days of rollups.
CREATE TABLE traffic_edges_seen (
    org_id       uuid        NOT NULL,
    mesh_id      uuid        NOT NULL,
    source       text        NOT NULL,
    destination  text        NOT NULL,
    first_seen   timestamptz NOT NULL,
    last_seen    timestamptz NOT NULL,
    CONSTRAINT traffic_edges_seen_pkey PRIMARY KEY (org_id, mesh_id, source, destination),
    CONSTRAINT traffic_edges_seen_mesh_fkey FOREIGN KEY (org_id, mesh_id)
        REFERENCES meshes (org_id, id) ON DELETE CASCADE
);
ALTER TABLE traffic_edges_seen ENABLE ROW LEVEL SECURITY;
ALTER TABLE traffic_edges_seen FORCE ROW LEVEL SECURITY;
CREATE POLICY traffic_edges_seen_tenant ON traffic_edges_seen
    USING (org_id = trellis_current_org()) WITH CHECK (org_id = trellis_current_org());

-- How far the minutes have been examined: those before `done_until` are. A watermark, no
-- tenant's data; it starts now, as the rollups' did.
CREATE TABLE traffic_event_scans (
    singleton   boolean     NOT NULL DEFAULT true,
    done_until  timestamptz NOT NULL,
    CONSTRAINT traffic_event_scans_pkey PRIMARY KEY (singleton),
    CONSTRAINT traffic_event_scans_singleton CHECK (singleton)
);
INSERT INTO traffic_event_scans (done_until)
    VALUES (to_timestamp(floor(extract(epoch FROM now()) / 60) * 60));

GRANT SELECT, INSERT, DELETE ON traffic_events TO trellis_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON traffic_edges_seen TO trellis_app;
GRANT SELECT, UPDATE ON traffic_event_scans TO trellis_app;
