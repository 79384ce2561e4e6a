-- The poller's predicates (30_ to 36_) -----------------------------------------------------------
--
-- Due, quiet, needy, complete, given up, lease free: each written once, for the poll statements in receiver/store/polling.py. They are plain SQL the
-- planner inlines, so those statements plan as if each were written out (EXPLAIN shows the queue
-- index and no function call; tests/test_poller.py checks it). A scalar SQL function holding a
-- subquery is never inlined, so the recipients are counted by recipient_tally(), a set-returning
-- function that is: joined LATERAL, or read in a scalar subquery.

-- What the table knows of a message's recipients: how many rows, how many final, how many Pending,
-- and when a webhook or a poll last changed one.
CREATE OR REPLACE FUNCTION recipient_tally(message_id text)
    RETURNS TABLE (known bigint, final bigint, pending bigint, last_result_at timestamptz)
    LANGUAGE sql STABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT count(*), count(*) FILTER (WHERE r.status IN ('Success', 'Failed')),
           count(*) FILTER (WHERE r.status = 'Pending'), max(r.updated_at)
    FROM recipients r WHERE r.message_id = recipient_tally.message_id;
END;
