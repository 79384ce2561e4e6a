-- A lease (a message's or a sweep's) that no live poller holds.
CREATE OR REPLACE FUNCTION lease_free(lease_until timestamptz)
    RETURNS boolean LANGUAGE sql STABLE PARALLEL SAFE
    RETURN lease_until IS NULL OR lease_until < now();
