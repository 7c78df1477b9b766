-- The last time something a join token let in was refused, and why: "waiting for the first
-- proxy" names the refusal its agent saw. `token`: an agent presented the token and was
-- refused (revoked, expired, spent, a bad CSR), which also shows that it reached the TLS port;
-- `stream`: an identity issued for the token opened an xDS stream that was refused (a tag the
-- token binds claimed otherwise, its service deleted). Only the last one is kept (bounded
-- whatever a peer sends).

ALTER TABLE join_tokens
    ADD COLUMN last_refused_at timestamptz,
    ADD COLUMN last_refusal text,
    ADD COLUMN last_refusal_step text,
    ADD CONSTRAINT join_tokens_last_refusal_len CHECK (char_length(last_refusal) <= 300),
    ADD CONSTRAINT join_tokens_last_refusal_step CHECK (last_refusal_step IN ('token', 'stream'));

-- Which (multi-use) join token a leaf was issued for, so that its stream's refusal reaches
-- that token. No foreign key: a leaf outlives nothing it names (both go with their mesh).
ALTER TABLE issued_svids ADD COLUMN join_token uuid;
