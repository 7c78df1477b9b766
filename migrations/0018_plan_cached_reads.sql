-- The functions on every request's path, in PL/pgSQL: PostgreSQL plans the statements of a
-- PL/pgSQL function once per connection and reuses the plan, where a set-returning SQL
-- function that cannot be inlined is planned again at every call (a token check cost about
-- ten times a primary-key read so). Same signatures, results and row-level security.

CREATE OR REPLACE FUNCTION trellis_authenticate_token(p_sha256 bytea)
RETURNS TABLE (
    id uuid, name text, role text, created_by text, created_at timestamptz,
    expires_at timestamptz, revoked_at timestamptz, last_used_at timestamptz,
    org_id uuid, org_slug text, org_name text, org_created_at timestamptz
)
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH tok AS (
        SELECT t.org_id, t.id, t.name, t.role, t.created_by, t.created_at, t.expires_at,
               t.revoked_at, t.last_used_at
        FROM api_tokens t
        WHERE t.token_sha256 = p_sha256 AND t.revoked_at IS NULL
          AND (t.expires_at IS NULL OR t.expires_at > now())
    ), marked AS (
        UPDATE api_tokens SET last_used_at = now() WHERE id IN (
            SELECT a.id FROM api_tokens a JOIN tok ON tok.id = a.id
            WHERE a.last_used_at IS NULL OR a.last_used_at < now() - interval '1 minute'
            FOR UPDATE OF a SKIP LOCKED)
    )
    SELECT tok.id, tok.name, tok.role, tok.created_by, tok.created_at, tok.expires_at,
           tok.revoked_at, tok.last_used_at, o.id, o.slug, o.name, o.created_at
    FROM tok JOIN organizations o ON o.id = tok.org_id;
END
$$;

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
    WITH reached AS MATERIALIZED (
        SELECT d.org_id, d.id, d.service, d.node_id,
               coalesce(d.synced_revision >= p_revision, false) AS applied
        FROM dataplanes d
        WHERE d.mesh_id = p_mesh AND d.online
          AND (p_target IS NULL
               OR (p_callers AND p_target = ANY (d.calls))
               OR (p_instances AND d.serves AND d.service = p_target))
    ), rejections AS MATERIALIZED (
        SELECT DISTINCT ON (r.id) r.service, r.node_id, l.type_url, l.nacked_version, l.nack_error
        FROM reached r
        JOIN xds_ledger l ON l.org_id = r.org_id AND l.dataplane_id = r.id
        WHERE NOT r.applied AND l.nacked_version IS NOT NULL AND l.nack_error IS NOT NULL
        ORDER BY r.id, l.type_url
    ), shown AS (
        SELECT * FROM rejections ORDER BY service, node_id LIMIT 5
    )
    SELECT (SELECT count(*) FROM reached),
           (SELECT count(*) FROM reached WHERE applied),
           (SELECT count(*) FROM rejections),
           ARRAY(SELECT type_url FROM shown ORDER BY service, node_id),
           ARRAY(SELECT nacked_version FROM shown ORDER BY service, node_id),
           ARRAY(SELECT nack_error FROM shown ORDER BY service, node_id);
END
$$;
