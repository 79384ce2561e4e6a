-- Every missing daily partition from today to `days` days ahead (UTC), gaps included, made beside
-- the table and attached (ATTACH takes no lock that stops writes); how many were made. Called by
-- the web (when a webhook finds its day missing, and hourly), the poller, `prune` and `migrate`.
-- SECURITY DEFINER: the processes that call it need not own the table.
CREATE OR REPLACE FUNCTION ensure_webhook_event_partitions(days integer DEFAULT 14) RETURNS integer
    LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT SET lock_timeout = '2s' AS $$
DECLARE
    today timestamptz := date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
    day_start timestamptz;
    part text;
    made integer := 0;
BEGIN
    PERFORM pg_advisory_xact_lock(7460817345);  -- one caller at a time
    FOR n IN 0 .. days LOOP
        day_start := today + make_interval(hours => 24 * n);  -- hours: a day is 24 of them in UTC, whatever the session's zone
        CONTINUE WHEN EXISTS (SELECT FROM webhook_event_partition_ranges() r
                              WHERE r.range_from < day_start + interval '24 hours' AND r.range_to > day_start);
        part := 'webhook_events_' || to_char(day_start AT TIME ZONE 'UTC', 'YYYYMMDD');
        -- IF NOT EXISTS: a day detached and not dropped (an interrupted prune) is attached again
        EXECUTE format('CREATE TABLE IF NOT EXISTS %I (LIKE webhook_events INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', part);
        EXECUTE format('ALTER TABLE webhook_events ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                       part, day_start, day_start + interval '24 hours');
        made := made + 1;
    END LOOP;
    RETURN made;
END $$;
