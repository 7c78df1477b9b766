-- A read of a window sums the final rollups inside it and 10 s buckets only at its ends; it
-- learns how far the rollups are final from their watermarks (timestamps, no tenant's data).
GRANT SELECT ON telemetry_rollups TO trellis_app;
