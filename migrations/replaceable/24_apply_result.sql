-- Apply one recipient report (a webhook, or one recipient of a poll). Outcome: 'applied' (the row
-- changed), 'duplicate' (the same report again) or 'stale' (an older report; nothing changed).
-- `won` says whether the report's status is now the row's; previous_* are the row's before.
CREATE OR REPLACE FUNCTION apply_result(
    p_message_id text, p_dest_seq text, p_destination text, p_type text, p_status text,
    p_result text, p_sent_at timestamptz, p_price numeric, p_sms_parts integer,
    p_sub_account text, p_department text, p_job_number text, p_contact_id text,
    p_detail text, p_source text, p_reported_at timestamptz DEFAULT NULL,
    OUT outcome text, OUT won boolean, OUT previous_status text, OUT previous_result text)
LANGUAGE plpgsql AS $$
DECLARE
    ev recipients;
    cur recipients;
    twin recipients;
    merged recipients;
    folded boolean := false;
    unseen boolean := false;  -- a plain read found no row with this DestSeq
    settled boolean := false;  -- the plain read showed the report changes nothing
    got boolean;
BEGIN
    PERFORM ensure_message(p_message_id, p_job_number, p_sub_account, p_department);
    ev.message_id := p_message_id;  ev.dest_seq := p_dest_seq;  ev.destination := p_destination;
    ev.type := p_type;  ev.status := p_status;  ev.result := p_result;  ev.sent_at := p_sent_at;
    ev.price := p_price;  ev.sms_parts := p_sms_parts;  ev.sub_account := p_sub_account;
    ev.department := p_department;  ev.job_number := p_job_number;  ev.contact_id := p_contact_id;
    ev.detail := p_detail;  ev.source := p_source;  ev.first_seen_at := now();
    ev.final_at := CASE WHEN p_status IN ('Success', 'Failed') THEN now() END;
    ev.reported_at := coalesce(p_reported_at, now());  -- when it was received (reprocess: then)

    -- A report that would change nothing (the same again, an older one, each poll's confirmation
    -- of a final recipient) is settled from a plain read, without the row lock (a WAL record and
    -- a dirtied page). Safe without the lock: the merge only moves a row up, so a report that
    -- leaves this version unchanged leaves any later version unchanged too.
    IF p_dest_seq IS NOT NULL THEN
        SELECT * INTO cur FROM recipients r WHERE r.message_id = p_message_id AND r.dest_seq = p_dest_seq;
        unseen := NOT FOUND;
        IF NOT unseen THEN  -- nested: a new recipient (the usual first report) evaluates nothing more
            merged := merge_recipient(cur, ev);
            settled := row(merged.*) IS NOT DISTINCT FROM row(cur.*)
                       AND NOT EXISTS (SELECT FROM recipients t  -- a provisional twin to fold in: the locked way
                                       WHERE t.message_id = p_message_id AND t.dest_seq IS NULL
                                         AND t.destination = cur.destination);
        END IF;
    END IF;

    IF NOT settled THEN
        LOOP
            got := false;
            IF p_dest_seq IS NOT NULL THEN
                IF NOT unseen THEN
                    SELECT * INTO cur FROM recipients r
                    WHERE r.message_id = p_message_id AND r.dest_seq = p_dest_seq FOR UPDATE;
                    got := FOUND;
                END IF;
                unseen := false;  -- absent when just read: one made since fails the INSERT, and is locked next round
                IF NOT got THEN  -- adopt the provisional row a DestSeq-less webhook made
                    SELECT * INTO cur FROM recipients r
                    WHERE r.message_id = p_message_id AND r.dest_seq IS NULL
                      AND r.destination = p_destination FOR UPDATE;
                    got := FOUND;
                END IF;
            ELSE
                SELECT * INTO cur FROM recipients r
                WHERE r.message_id = p_message_id AND r.destination = p_destination
                ORDER BY r.dest_seq NULLS LAST LIMIT 1 FOR UPDATE;
                got := FOUND;
            END IF;
            EXIT WHEN got;

            INSERT INTO recipients (message_id, dest_seq, destination, type, status, result, sent_at,
                                    price, sms_parts, sub_account, department, job_number,
                                    contact_id, detail, source, final_at, reported_at)
            VALUES (p_message_id, p_dest_seq, p_destination, p_type, p_status, p_result, p_sent_at,
                    p_price, p_sms_parts, p_sub_account, p_department, p_job_number, p_contact_id,
                    p_detail, p_source, ev.final_at, ev.reported_at)
            ON CONFLICT DO NOTHING;
            IF FOUND THEN
                outcome := 'applied';
                won := true;
                IF p_dest_seq IS NOT NULL THEN
                    UPDATE replies SET dest_seq = p_dest_seq, updated_at = now()
                    WHERE message_id = p_message_id AND from_number = p_destination AND dest_seq IS NULL;
                END IF;
                RETURN;
            END IF;
            -- A concurrent request inserted this recipient first: go round and merge into its row.
        END LOOP;

        merged := cur;

        -- A row with the real DestSeq and a provisional twin (both made in a race): fold the twin in.
        IF p_dest_seq IS NOT NULL AND cur.dest_seq IS NOT NULL THEN
            DELETE FROM recipients r
            WHERE r.message_id = p_message_id AND r.dest_seq IS NULL AND r.destination = cur.destination
            RETURNING * INTO twin;
            IF FOUND THEN
                merged := merge_recipient(merged, twin);
                folded := true;
            END IF;
        END IF;

        merged := merge_recipient(merged, ev);
    END IF;

    previous_status := cur.status;
    previous_result := cur.result;
    won := merged.status = p_status AND merged.result IS NOT DISTINCT FROM p_result
           AND merged.sent_at IS NOT DISTINCT FROM p_sent_at AND merged.source = p_source;

    IF folded OR row(merged.*) IS DISTINCT FROM row(cur.*) THEN
        UPDATE recipients r SET
            dest_seq = merged.dest_seq, type = merged.type, status = merged.status,
            result = merged.result, sent_at = merged.sent_at, price = merged.price,
            sms_parts = merged.sms_parts, sub_account = merged.sub_account,
            department = merged.department, job_number = merged.job_number,
            contact_id = merged.contact_id, detail = merged.detail, source = merged.source,
            first_seen_at = merged.first_seen_at, final_at = merged.final_at,
            reported_at = merged.reported_at, updated_at = now()
        WHERE r.id = cur.id;
        outcome := 'applied';
        IF cur.dest_seq IS NULL AND merged.dest_seq IS NOT NULL THEN
            UPDATE replies SET dest_seq = merged.dest_seq, updated_at = now()
            WHERE message_id = p_message_id AND from_number = cur.destination AND dest_seq IS NULL;
        END IF;
    ELSIF left(recipient_order_key(p_status, p_sent_at, ev.reported_at, p_result, p_source), -1)
        = left(recipient_order_key(cur.status, cur.sent_at, coalesce(cur.reported_at, cur.updated_at),
                                   cur.result, cur.source), -1) THEN
        outcome := 'duplicate';  -- the same report again, maybe through the other channel
    ELSE
        outcome := 'stale';
    END IF;
END $$;
