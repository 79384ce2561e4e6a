-- Needy: likely missing a result (no recipient at all, a Pending one, or fewer final ones than the
-- count), or its replies still to fetch. A message that is not needy only wants a confirmation.
CREATE OR REPLACE FUNCTION poll_needy(recipient_count integer, known bigint, pending bigint, final bigint,
                                      replies_due boolean)
    RETURNS boolean LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN known = 0 OR pending > 0 OR coalesce(recipient_count, 0) > final OR replies_due;
