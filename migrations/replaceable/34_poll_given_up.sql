-- Given up: POLL_GIVE_UP_SECONDS after the message was tracked, or after its send time when later.
CREATE OR REPLACE FUNCTION poll_given_up(first_seen_at timestamptz, delayed_at timestamptz,
                                         give_up double precision)
    RETURNS boolean LANGUAGE sql STABLE PARALLEL SAFE
    RETURN greatest(first_seen_at, delayed_at) < now() - make_interval(secs => give_up);
