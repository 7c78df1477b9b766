-- Denial attribution ("why was this denied?"): what an access-log entry needs beyond what
-- the proxy logged to name the rule that decided a call, and to find one entry by its id.
--  * audit_policy: the audit rule (shadow RBAC policy) that matched the call, if any;
--    `rbac_policy` already holds the policy a denial named.
--  * mesh_revision: the mesh's revision when the entry was stored, so that a rule changed
--    or deleted since shows as such.
ALTER TABLE access_log ADD COLUMN audit_policy text;
ALTER TABLE access_log ADD COLUMN mesh_revision bigint;
CREATE INDEX access_log_by_id ON access_log (org_id, id);
-- A call an audit rule matched is kept whatever the sample (the rule is a deny rule on
-- trial: what it would refuse is what its author wants to see).
ALTER TABLE access_log DROP CONSTRAINT access_log_outcome_check;
ALTER TABLE access_log ADD CONSTRAINT access_log_outcome_check
    CHECK (outcome IN ('denied', 'error', 'audited', 'sampled'));
