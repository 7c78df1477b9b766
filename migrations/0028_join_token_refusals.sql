-- The last time an agent presented a join token and was refused, and why: "waiting for the
-- first proxy" names the refusal the agent saw. Only the last one is kept (bounded whatever a
-- peer sends), and a token also proves by it that its agent reached the TLS port.

ALTER TABLE join_tokens
    ADD COLUMN last_refused_at timestamptz,
    ADD COLUMN last_refusal text,
    ADD CONSTRAINT join_tokens_last_refusal_len CHECK (char_length(last_refusal) <= 300);
