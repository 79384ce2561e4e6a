-- Due: active, not leased, its back-off over, sent (a scheduled message is not polled before its
-- send time), and quiet.
CREATE OR REPLACE FUNCTION poll_due(m messages, last_result_at timestamptz, after double precision)
    RETURNS boolean LANGUAGE sql STABLE PARALLEL SAFE
    RETURN m.poll_state = 'active' AND lease_free(m.lease_until)
       AND coalesce(m.next_poll_at, '-infinity') <= now() AND coalesce(m.delayed_at, '-infinity') <= now()
       AND poll_quiet(m, last_result_at, after);
