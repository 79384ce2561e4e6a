-- The merge rule -------------------------------------------------------------------------------
--
-- A recipient row holds the greatest report seen for it, by the total order
--   final status (Success/Failed) above Pending, then event time (credible_time: a time more
--   than a day after the report's receipt counts as the receipt's; then the time as sent), then a
--   fingerprint of the status and result text, then webhook above poll (recipient_order_key).
-- Taking a maximum is commutative and idempotent, so the same set of events gives the same row in
-- any order and any number of times. The winner's price, SMS parts and detail are kept, but a
-- report without them (a Pending one, or a poll, which has no Detail) never blanks them.
-- Descriptive fields (DestSeq, type, sub account, department, job number, contact id) are filled
-- in when missing and never changed. Webhooks and polls both go through apply_result().

-- Time from a sender is evidence, not authority: a report time more than a day after this service
-- received the report (a sender's clock years ahead) is ordered as if it were the time of receipt.
-- The time sent is kept as sent (sent_at, received_at) for reporting; only the order uses this.
-- STABLE, as its body is (timestamptz + interval): the planner inlines a SQL function only when it
-- is declared no stricter than its body, and a call that is not inlined runs an executor of its own.
CREATE OR REPLACE FUNCTION credible_time(sent timestamptz, received timestamptz) RETURNS timestamptz
    LANGUAGE sql STABLE PARALLEL SAFE
    RETURN CASE WHEN sent > received + interval '24 hours' THEN received ELSE sent END;
