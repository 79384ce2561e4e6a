-- The text of each migrations/replaceable/ file `migrate` last applied here.
CREATE TABLE schema_replaceables (
    name        text PRIMARY KEY,       -- the file's name, without .sql
    checksum    text NOT NULL,          -- SHA-256 of its text
    applied_at  timestamptz NOT NULL DEFAULT now()
);
