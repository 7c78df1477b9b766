-- The read path in one round trip, and propagation counted where the rows are.
--
-- Every function here is SECURITY INVOKER (the default): it runs as `trellis_app`, under the
-- same FORCEd row-level security as any other query, and sees only the tenant that
-- `app.org_id` names. A function that takes an organization sets `app.org_id` for the current
-- transaction only (`set_config(…, true)`), exactly as `BEGIN` of a tenant transaction does;
-- called as a statement of its own, that transaction is the statement.

-- The service a resource configures: its own name for a Service, its `targetRef.service`
-- otherwise (NULL: the resource configures every proxy of its mesh). Kept by PostgreSQL, so
-- that propagation can be counted without reading specs.
ALTER TABLE resources ADD COLUMN target text GENERATED ALWAYS AS (
    CASE WHEN kind = 'Service' THEN name ELSE spec -> 'targetRef' ->> 'service' END
) STORED;

-- Rejections still outstanding are few; this finds them without visiting every ledger line.
CREATE INDEX xds_ledger_rejected ON xds_ledger (org_id, dataplane_id, type_url)
    WHERE nacked_version IS NOT NULL AND nack_error IS NOT NULL;

-- The live API token with this SHA-256 (not revoked, not expired) in the current tenant,
-- with its organization. Marks the token used at most once a minute; the mark skips a row
-- another request is marking (SKIP LOCKED), so concurrent requests with one token never
-- wait on each other, and a read that marks nothing writes nothing.
CREATE FUNCTION trellis_authenticate_token(p_sha256 bytea)
RETURNS TABLE (
    id uuid, name text, role text, created_by text, created_at timestamptz,
    expires_at timestamptz, revoked_at timestamptz, last_used_at timestamptz,
    org_id uuid, org_slug text, org_name text, org_created_at timestamptz
)
LANGUAGE sql VOLATILE AS $$
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
    FROM tok JOIN organizations o ON o.id = tok.org_id
$$;

-- How far mesh revision `p_revision` has reached the online proxies of mesh `p_mesh` that a
-- resource targeting `p_target` configures: as a caller of it (`p_callers`: the proxy was
-- sent caller-side resources of that service) and/or as one of its instances
-- (`p_instances`: the proxy is of that service and was sent its inbound side); a NULL target
-- configures every online proxy. One row, whatever the fleet: the counts, and of the proxies
-- that have not applied the revision and have a rejection outstanding, the first five (by
-- service and node), each with its first rejected type (by type URL).
CREATE FUNCTION trellis_propagation(
    p_mesh uuid, p_revision bigint, p_callers boolean, p_instances boolean, p_target text
)
RETURNS TABLE (
    proxies bigint, applied bigint, rejected bigint,
    nack_type_urls text[], nack_versions text[], nack_errors text[]
)
LANGUAGE sql STABLE AS $$
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
           ARRAY(SELECT nack_error FROM shown ORDER BY service, node_id)
$$;

-- `trellis_propagation` in the tenant `p_org`, as a statement of its own: a write reads its
-- propagation after it committed, outside its transaction.
CREATE FUNCTION trellis_tenant_propagation(
    p_org uuid, p_mesh uuid, p_revision bigint, p_callers boolean, p_instances boolean, p_target text
)
RETURNS TABLE (
    proxies bigint, applied bigint, rejected bigint,
    nack_type_urls text[], nack_versions text[], nack_errors text[]
)
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM set_config('app.org_id', p_org::text, true);
    RETURN QUERY SELECT * FROM trellis_propagation(p_mesh, p_revision, p_callers, p_instances, p_target);
END
$$;

-- A GET of one resource with an API token, in one round trip and without an explicit
-- transaction: the tenant setting, the token (with its organization and revocation, so a
-- revoked token is refused at once on every replica), the mesh, the resource and its
-- propagation. No row: the token is unknown, revoked or expired. The caller checks the
-- organization's slug and the token's role before it shows anything.
CREATE FUNCTION trellis_read_resource(
    p_org uuid, p_sha256 bytea, p_mesh text, p_kind text, p_name text,
    p_callers boolean, p_instances boolean
)
RETURNS TABLE (
    id uuid, name text, role text, created_by text, created_at timestamptz,
    expires_at timestamptz, revoked_at timestamptz, last_used_at timestamptz,
    org_id uuid, org_slug text, org_name text, org_created_at timestamptz,
    m_id uuid, m_name text, m_trust_domain text, m_spec jsonb, m_labels jsonb,
    m_generation bigint, m_version uuid, m_revision bigint, m_created_at timestamptz,
    m_updated_at timestamptz,
    r_id uuid, r_kind text, r_name text, r_spec jsonb, r_labels jsonb, r_generation bigint,
    r_version uuid, r_created_at timestamptz, r_updated_at timestamptz, r_mesh_revision bigint,
    r_target text,
    proxies bigint, applied bigint, rejected bigint,
    nack_type_urls text[], nack_versions text[], nack_errors text[]
)
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
BEGIN
    PERFORM set_config('app.org_id', p_org::text, true);
    RETURN QUERY
        SELECT t.*,
               m.id, m.name, m.trust_domain, m.spec, m.labels, m.generation, m.version, m.revision,
               m.created_at, m.updated_at,
               r.id, r.kind, r.name, r.spec, r.labels, r.generation, r.version, r.created_at,
               r.updated_at, r.mesh_revision, r.target,
               p.*
        FROM trellis_authenticate_token(p_sha256) t
        LEFT JOIN meshes m ON m.name = p_mesh
        LEFT JOIN resources r ON r.mesh_id = m.id AND r.kind = p_kind AND r.name = p_name
        LEFT JOIN LATERAL trellis_propagation(m.id, r.mesh_revision, p_callers, p_instances, r.target) p
            ON r.mesh_revision IS NOT NULL;
END
$$;

GRANT EXECUTE ON FUNCTION
    trellis_authenticate_token(bytea),
    trellis_propagation(uuid, bigint, boolean, boolean, text),
    trellis_tenant_propagation(uuid, uuid, bigint, boolean, boolean, text),
    trellis_read_resource(uuid, bytea, text, text, text, boolean, boolean)
TO trellis_app;
