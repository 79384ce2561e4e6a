-- 0007: webhook_events partitioned by day (received_at, UTC), so that retention drops whole days.
--
-- The existing table becomes the first partition, covering everything before the boundary the
-- revision's first steps (0007_partitioned_events.py, outside this transaction) put in a
-- validated CHECK constraint: the start of the next UTC day. Attaching it needs no scan and its
-- indexes are reused, so this transaction holds webhooks up only while it runs (milliseconds),
-- after a lock wait of at most lock_timeout.

SET LOCAL lock_timeout = '2s';

-- Daily partitions from the last one's end to `days` days ahead (UTC), made beside the table and
-- attached (ATTACH takes no lock that stops writes); called by the poller, `prune` and `migrate`.
-- SECURITY DEFINER: the processes that call it need not own the table.
CREATE FUNCTION ensure_webhook_event_partitions(days integer DEFAULT 14) RETURNS integer
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp SET lock_timeout = '2s' AS $$
DECLARE
    next_start timestamptz;
    upto timestamptz := (date_trunc('day', now() AT TIME ZONE 'UTC') + make_interval(days => days + 1)) AT TIME ZONE 'UTC';
    part text;
    made integer := 0;
BEGIN
    PERFORM pg_advisory_xact_lock(7460817345);  -- one caller at a time
    SELECT max(substring(pg_get_expr(c.relpartbound, c.oid) FROM 'TO \(''([^'']+)''\)')::timestamptz)
    INTO next_start
    FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
    WHERE i.inhparent = 'webhook_events'::regclass;
    next_start := coalesce(next_start, date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC');
    WHILE next_start < upto LOOP
        part := 'webhook_events_' || to_char(next_start AT TIME ZONE 'UTC', 'YYYYMMDD');
        EXECUTE format('CREATE TABLE %I (LIKE webhook_events INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', part);
        EXECUTE format('ALTER TABLE webhook_events ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                       part, next_start, next_start + interval '1 day');
        next_start := next_start + interval '1 day';
        made := made + 1;
    END LOOP;
    RETURN made;
END $$;

DO $$
DECLARE
    bound timestamptz;
    legacy text;
    last_id bigint;
    grant_ record;
    index_ record;
BEGIN
    SELECT substring(pg_get_constraintdef(oid) FROM '''([^'']+)''')::timestamptz INTO bound
    FROM pg_constraint WHERE conrelid = 'webhook_events'::regclass AND conname = 'webhook_events_partition_bound';
    legacy := 'webhook_events_before_' || to_char(bound AT TIME ZONE 'UTC', 'YYYYMMDD');

    ALTER TABLE webhook_events RENAME TO webhook_events_legacy;
    EXECUTE format('ALTER TABLE webhook_events_legacy RENAME TO %I', legacy);
    -- (id, received_at) is the key now: the index built concurrently becomes it (a constraint, so
    -- that ATTACH takes it for the parent's key instead of building one under its lock)
    EXECUTE format('ALTER TABLE %I DROP CONSTRAINT webhook_events_pkey', legacy);
    EXECUTE format('ALTER TABLE %I ADD CONSTRAINT %I PRIMARY KEY USING INDEX webhook_events_id_received_at_key',
                   legacy, legacy || '_pkey');
    -- Its indexes and key keep their names' meaning under the partition's name.
    FOR index_ IN SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
                  WHERE i.indrelid = legacy::regclass AND c.relname LIKE 'webhook\_events\_%' LOOP
        EXECUTE format('ALTER INDEX %I RENAME TO %I', index_.relname,
                       legacy || substring(index_.relname FROM length('webhook_events') + 1));
    END LOOP;
    EXECUTE format('ALTER TABLE %I ALTER COLUMN id DROP IDENTITY', legacy);  -- the parent numbers ids now

    CREATE TABLE webhook_events (
        id              bigint GENERATED ALWAYS AS IDENTITY,
        received_at     timestamptz NOT NULL DEFAULT now(),
        method          text NOT NULL,
        format          text CONSTRAINT webhook_events_format_check CHECK (format IN ('json', 'xml', 'form', 'query')),
        content_type    text,
        headers         jsonb NOT NULL DEFAULT '{}',
        query_string    text,
        body            text,
        kind            text CONSTRAINT webhook_events_kind_check CHECK (kind IN ('result', 'reply')),
        message_id      text,
        outcome         text NOT NULL
                        CONSTRAINT webhook_events_outcome_check CHECK (outcome IN ('applied', 'duplicate', 'stale', 'rejected')),
        error           text,
        reprocessed_at  timestamptz,
        PRIMARY KEY (id, received_at)
    ) PARTITION BY RANGE (received_at);
    EXECUTE format('SELECT max(id) FROM %I', legacy) INTO last_id;
    PERFORM setval(pg_get_serial_sequence('webhook_events', 'id'), coalesce(last_id, 0) + 1, false);
    CREATE INDEX webhook_events_received_at_idx ON webhook_events (received_at);
    CREATE INDEX webhook_events_rejected_idx ON webhook_events (id) WHERE outcome = 'rejected';
    CREATE INDEX webhook_events_message_idx ON webhook_events (message_id);

    EXECUTE format('ALTER TABLE webhook_events ATTACH PARTITION %I FOR VALUES FROM (MINVALUE) TO (%L)', legacy, bound);
    EXECUTE format('ALTER TABLE %I DROP CONSTRAINT webhook_events_partition_bound', legacy);

    -- Whoever could use the table can use it still.
    FOR grant_ IN SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(r.rolname) END AS grantee, a.privilege_type
                  FROM pg_class c CROSS JOIN LATERAL aclexplode(c.relacl) a LEFT JOIN pg_roles r ON r.oid = a.grantee
                  WHERE c.oid = legacy::regclass AND a.grantee <> c.relowner LOOP
        EXECUTE format('GRANT %s ON webhook_events TO %s', grant_.privilege_type, grant_.grantee);
    END LOOP;
END $$;

-- The day after the first partition's end, within this transaction; `migrate` makes the rest
-- after it (each partition made here would hold writes up a little longer).
SELECT ensure_webhook_event_partitions(1);
