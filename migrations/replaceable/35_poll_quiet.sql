-- Quiet: nothing heard of the message (tracked, polled, a recipient changed) for `after` seconds
-- (POLL_AFTER_SECONDS), so a callback still on its way has had its time.
CREATE OR REPLACE FUNCTION poll_quiet(m messages, last_result_at timestamptz, after double precision)
    RETURNS boolean LANGUAGE sql STABLE PARALLEL SAFE
    RETURN greatest(m.first_seen_at, m.last_polled_at, last_result_at) <= now() - make_interval(secs => after);
