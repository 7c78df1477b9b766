-- Endpoint health's SQL cost (BENCHMARKS.md, "Endpoint health"): the writer's upsert of
-- 10,000 reports three times, then service health's read of one service's reports. Run as a
-- superuser on a scratch database migrated with `trellis migrate`.
\set ON_ERROR_STOP on
SET app.org_id = '00000000-0000-0000-0000-0000000000a1';
INSERT INTO organizations (id, name, slug) VALUES ('00000000-0000-0000-0000-0000000000a1', 'Acme', 'acme');
INSERT INTO meshes (org_id, id, name, trust_domain) VALUES ('00000000-0000-0000-0000-0000000000a1', '00000000-0000-0000-0000-0000000000b1', 'shop', 'shop.acme.test');
-- 1,000 proxies of 100 services, each online.
INSERT INTO dataplanes (org_id, mesh_id, service, node_id, client)
SELECT '00000000-0000-0000-0000-0000000000a1', '00000000-0000-0000-0000-0000000000b1', 'svc' || (i % 100), 'node-' || i, 'envoy'
FROM generate_series(0, 999) i;
\timing on
-- One batch the writer sends: 1,000 proxies × 10 upstream clusters (10,000 rows), first insert then replacement.
PREPARE up(timestamptz) AS
INSERT INTO endpoint_health AS e (org_id, mesh_id, node_id, source_service, destination_service, destination_port, destination_subset, total, healthy, degraded, ejected, reported_at)
SELECT '00000000-0000-0000-0000-0000000000a1', t.* FROM unnest(
  (SELECT array_agg('00000000-0000-0000-0000-0000000000b1'::uuid) FROM generate_series(0, 9999)),
  (SELECT array_agg('node-' || (i / 10)) FROM generate_series(0, 9999) i),
  (SELECT array_agg('svc' || ((i / 10) % 100)) FROM generate_series(0, 9999) i),
  (SELECT array_agg('svc' || ((i * 7) % 100)) FROM generate_series(0, 9999) i),
  (SELECT array_agg(9080) FROM generate_series(0, 9999)),
  (SELECT array_agg(''::text) FROM generate_series(0, 9999)),
  (SELECT array_agg(3::int8) FROM generate_series(0, 9999)),
  (SELECT array_agg(2::int8) FROM generate_series(0, 9999)),
  (SELECT array_agg(0::int8) FROM generate_series(0, 9999)),
  (SELECT array_agg(1::int8) FROM generate_series(0, 9999)),
  (SELECT array_agg($1) FROM generate_series(0, 9999))
) AS t(m, n, s, d, p, b, tot, h, deg, ej, at)
ON CONFLICT ON CONSTRAINT endpoint_health_pkey DO UPDATE SET source_service = EXCLUDED.source_service, total = EXCLUDED.total, healthy = EXCLUDED.healthy, degraded = EXCLUDED.degraded, ejected = EXCLUDED.ejected, reported_at = EXCLUDED.reported_at WHERE e.reported_at <= EXCLUDED.reported_at;
BEGIN; EXECUTE up(now()); COMMIT;
BEGIN; EXECUTE up(now()); COMMIT;
BEGIN; EXECUTE up(now()); COMMIT;
ANALYZE endpoint_health;
-- Service health's read for one destination (about 100 reports).
PREPARE seen(text) AS
SELECT e.source_service, e.node_id, d.id, e.destination_port, e.destination_subset, e.total, e.healthy, e.degraded, e.ejected, e.reported_at
FROM endpoint_health e JOIN dataplanes d ON d.org_id = e.org_id AND d.mesh_id = e.mesh_id AND d.node_id = e.node_id AND d.service = e.source_service AND d.online
WHERE e.org_id = '00000000-0000-0000-0000-0000000000a1' AND e.mesh_id = '00000000-0000-0000-0000-0000000000b1' AND e.destination_service = $1 AND e.reported_at >= now() - interval '60 seconds'
ORDER BY (e.ejected > 0 OR e.total > e.healthy + e.degraded) DESC, e.source_service, e.node_id, e.destination_port, e.destination_subset LIMIT 500;
ANALYZE;
EXPLAIN ANALYZE EXECUTE seen('svc8');
