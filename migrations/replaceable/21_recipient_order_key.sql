-- A report's place in the merge's order, as text that sorts like it: final above Pending, then its
-- credible time, then its time as sent (two reports at one credible time: a total order), then a
-- fingerprint of its status and result text, then webhook above poll (the last character).
-- STABLE, as its body is (extract from a timestamptz, a record as text), so that it is inlined where
-- it is called: declared IMMUTABLE, every call ran an executor of its own (merge_recipient() took
-- 35 us a call, 8 inlined; a 100-recipient poll page already stored, 12-14 ms, 7 inlined).
CREATE OR REPLACE FUNCTION recipient_order_key(status text, sent_at timestamptz, reported_at timestamptz,
                                    result text, source text)
RETURNS text LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN status IN ('Success', 'Failed') THEN '1' ELSE '0' END
        || lpad(coalesce(floor(extract(epoch FROM credible_time(sent_at, reported_at)) * 1000)::bigint, 0)::text,
                15, '0')
        || lpad(coalesce(floor(extract(epoch FROM sent_at) * 1000)::bigint, 0)::text, 15, '0')
        || md5(row(status, result)::text)
        || CASE WHEN source = 'webhook' THEN '1' ELSE '0' END
$$;
