-- Service health: what a service's proxies hold and last refused.
--
-- * dataplanes.svid_serial / svid_not_after: the SVID a dataplane's xDS stream presented when
--   it registered, moved on by each renewal that the holder of that SVID makes (the identity
--   service knows the certificate a renewal authenticated with), so that a service's
--   earliest expiry is that of certificates its proxies hold now, not of every certificate
--   ever issued to it. Not in the `dataplanes_changed` trigger's columns: no mesh revision.
-- * xds_ledger.last_nack_version / last_nack_error: the last rejection of a type, kept after
--   the proxy accepts a later version (nacked_version and nack_error say what is still
--   outstanding, and an ACK clears them); nacked_at is when it came.
ALTER TABLE dataplanes
    ADD COLUMN svid_serial text,
    ADD COLUMN svid_not_after timestamptz;
CREATE INDEX dataplanes_svid ON dataplanes (org_id, svid_serial) WHERE svid_serial IS NOT NULL;

ALTER TABLE xds_ledger
    ADD COLUMN last_nack_version text,
    ADD COLUMN last_nack_error text;
