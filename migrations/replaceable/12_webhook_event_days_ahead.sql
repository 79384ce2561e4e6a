-- How many days after today (UTC) webhook_events has partitions for, without a gap: 0 when only
-- today's exists, -1 when not even today's (the next webhook makes it). /readyz and /metrics say it.
-- Read from the partitions' names (webhook_events_YYYYMMDD, and 0007's webhook_events_before_YYYYMMDD
-- for every day before its own): the catalog alone, so a probe never waits on a lock on the table.
CREATE OR REPLACE FUNCTION webhook_event_days_ahead() RETURNS integer LANGUAGE plpgsql STABLE AS $$
DECLARE
    today date := (now() AT TIME ZONE 'UTC')::date;
    n integer := -1;
    days text[];
    before_day date;
BEGIN
    SELECT array_agg(c.relname),
           max(to_date(substring(c.relname FROM '^webhook_events_before_([0-9]{8})$'), 'YYYYMMDD'))
    INTO days, before_day
    FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
    WHERE i.inhparent = 'webhook_events'::regclass;
    WHILE n < 366 AND (today + n + 1 < before_day
                       OR 'webhook_events_' || to_char(today + n + 1, 'YYYYMMDD') = ANY (days)) LOOP
        n := n + 1;
    END LOOP;
    RETURN n;
END $$;
