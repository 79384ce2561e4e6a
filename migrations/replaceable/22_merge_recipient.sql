-- The row that results from merging report `b` into row `a` (either may be the older).
CREATE OR REPLACE FUNCTION merge_recipient(a recipients, b recipients)
RETURNS recipients LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    key_a text := recipient_order_key(a.status, a.sent_at, coalesce(a.reported_at, a.updated_at), a.result, a.source);
    key_b text := recipient_order_key(b.status, b.sent_at, coalesce(b.reported_at, b.updated_at), b.result, b.source);
    wins boolean := key_b > key_a;
    hi recipients := CASE WHEN wins THEN b ELSE a END;
    lo recipients := CASE WHEN wins THEN a ELSE b END;
    m recipients := a;
BEGIN
    m.status := hi.status;  m.result := hi.result;  m.sent_at := hi.sent_at;  m.source := hi.source;
    m.price := coalesce(hi.price, lo.price);
    m.sms_parts := coalesce(hi.sms_parts, lo.sms_parts);
    m.detail := coalesce(hi.detail, lo.detail);
    m.dest_seq := coalesce(a.dest_seq, b.dest_seq);
    m.type := coalesce(a.type, b.type);
    m.sub_account := coalesce(a.sub_account, b.sub_account);
    m.department := coalesce(a.department, b.department);
    m.job_number := coalesce(a.job_number, b.job_number);
    m.contact_id := coalesce(a.contact_id, b.contact_id);
    m.first_seen_at := least(a.first_seen_at, b.first_seen_at);
    m.final_at := least(a.final_at, b.final_at);  -- the first final report; a later one never moves it
    -- When the winner was received: the same report twice keeps its first receipt (unknown, NULL,
    -- for a row written before 0009: its updated_at stands in).
    m.reported_at := CASE WHEN key_a <> key_b THEN hi.reported_at
                          WHEN a.reported_at IS NULL OR b.reported_at IS NULL THEN NULL
                          ELSE least(a.reported_at, b.reported_at) END;
    RETURN m;
END $$;
