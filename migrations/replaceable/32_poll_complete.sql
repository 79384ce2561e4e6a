-- Complete: every recipient final (as many final rows as BestSMS's or the registered count; an
-- unknown count is not complete) and no reply fetch left to do. A complete message is never
-- polled again.
CREATE OR REPLACE FUNCTION poll_complete(recipient_count integer, final bigint, replies_due boolean)
    RETURNS boolean LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN coalesce(recipient_count <= final, false) AND NOT replies_due;
