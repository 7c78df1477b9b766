-- A leaf renewed by its holder: the renewal that replaced it (authenticated with it) sets
-- `superseded_at`. Retiring a CA counts only the leaves still in use (unexpired and not
-- superseded), so a root rotation completes once every workload renewed under the new root
-- instead of waiting out the old leaves' lifetime. A column of an existing table: its
-- row-level security covers it.
ALTER TABLE issued_svids ADD COLUMN superseded_at timestamptz;
