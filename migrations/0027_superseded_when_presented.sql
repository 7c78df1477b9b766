-- A renewed leaf used to be marked superseded when its successor was issued. If the reply
-- carrying the successor was lost, the workload still held only the old leaf, yet an
-- unforced retire of its CA no longer counted it and would have cut it off. Now the
-- successor records which leaf it `replaces`, and the old one is superseded when the
-- successor is first presented (authenticates): proof that its holder has it. A column of
-- an existing table: its row-level security covers it.
ALTER TABLE issued_svids ADD COLUMN replaces text;
