CREATE OR REPLACE FUNCTION apply_reply(
    p_received_id text, p_message_id text, p_type text, p_from_number text, p_message_text text,
    p_received_at timestamptz, p_sub_account text, p_department text, p_job_number text,
    p_contact_id text, p_detail text, p_source text, p_price numeric DEFAULT NULL,
    p_dest_seq text DEFAULT NULL,
    OUT outcome text)
LANGUAGE plpgsql AS $$
DECLARE
    v_dest_seq text := p_dest_seq;        -- the recipient a poll lists the reply under
    v_received_id text := p_received_id;
    v_same text;
    v_sub_account text := p_sub_account;  -- left empty by BestSMS: the message's, for re-billing
    v_department text := p_department;
BEGIN
    IF p_message_id IS NOT NULL THEN
        PERFORM ensure_message(p_message_id, p_job_number, p_sub_account, p_department);
        SELECT coalesce(v_sub_account, m.sub_account), coalesce(v_department, m.department)
        INTO v_sub_account, v_department FROM messages m WHERE m.message_id = p_message_id;
        IF v_dest_seq IS NULL THEN        -- a webhook: the recipient whose number replied
            SELECT r.dest_seq INTO v_dest_seq FROM recipients r
            WHERE r.message_id = p_message_id AND r.destination = p_from_number AND r.dest_seq IS NOT NULL
            ORDER BY r.dest_seq LIMIT 1;
        END IF;
    END IF;
    -- A reply BestSMS listed without its id (key 'poll:<digest>', from the v2.04 shapes) is the
    -- same reply as one with an id when sender, message, text and time (within 5 s) agree: the
    -- keyless one fills in the row that has its id, or hands its row over to the id.
    IF p_received_at IS NOT NULL THEN
        SELECT p.received_id INTO v_same FROM replies p
        WHERE p.received_at BETWEEN p_received_at - interval '5 seconds' AND p_received_at + interval '5 seconds'
          AND p.from_number = p_from_number AND p.message_text IS NOT DISTINCT FROM p_message_text
          AND p.message_id IS NOT DISTINCT FROM p_message_id AND p.received_id <> p_received_id
          AND (p_received_id LIKE 'poll:%' OR p.received_id LIKE 'poll:%')
        ORDER BY p.received_id LIKE 'poll:%', p.received_id
        LIMIT 1;
        IF FOUND AND p_received_id LIKE 'poll:%' THEN
            v_received_id := v_same;
        ELSIF FOUND AND NOT EXISTS (SELECT FROM replies WHERE received_id = p_received_id) THEN
            UPDATE replies SET received_id = p_received_id, updated_at = now() WHERE received_id = v_same;
        END IF;
    END IF;
    INSERT INTO replies (received_id, message_id, dest_seq, type, from_number, message_text,
                         received_at, sub_account, department, job_number, contact_id, detail, source,
                         price)
    VALUES (v_received_id, p_message_id, v_dest_seq, p_type, p_from_number, p_message_text,
            p_received_at, v_sub_account, v_department, p_job_number, p_contact_id, p_detail, p_source,
            p_price)
    ON CONFLICT (received_id) DO NOTHING;
    IF FOUND THEN
        outcome := 'applied';
        RETURN;
    END IF;
    -- Seen before (a retry, or the same reply from a poll): fill in only what was missing.
    UPDATE replies p SET message_id   = coalesce(p.message_id, p_message_id),
                         dest_seq     = coalesce(p.dest_seq, v_dest_seq),
                         message_text = coalesce(p.message_text, p_message_text),
                         received_at  = coalesce(p.received_at, p_received_at),
                         sub_account  = coalesce(p.sub_account, v_sub_account),
                         department   = coalesce(p.department, v_department),
                         job_number   = coalesce(p.job_number, p_job_number),
                         contact_id   = coalesce(p.contact_id, p_contact_id),
                         detail       = coalesce(p.detail, p_detail),
                         price        = coalesce(p.price, p_price),
                         updated_at   = now()
    WHERE p.received_id = v_received_id
      AND ((p.message_id IS NULL AND p_message_id IS NOT NULL)
        OR (p.dest_seq IS NULL AND v_dest_seq IS NOT NULL)
        OR (p.message_text IS NULL AND p_message_text IS NOT NULL)
        OR (p.received_at IS NULL AND p_received_at IS NOT NULL)
        OR (p.sub_account IS NULL AND v_sub_account IS NOT NULL)
        OR (p.department IS NULL AND v_department IS NOT NULL)
        OR (p.job_number IS NULL AND p_job_number IS NOT NULL)
        OR (p.contact_id IS NULL AND p_contact_id IS NOT NULL)
        OR (p.detail IS NULL AND p_detail IS NOT NULL)
        OR (p.price IS NULL AND p_price IS NOT NULL));
    outcome := CASE WHEN FOUND THEN 'applied' ELSE 'duplicate' END;
END $$;
