-- 0010: every stored DestSeq in the 8-character form BestSMS's webhooks write. Touches only the
-- rows with a shorter one (a poll's, read as a number), each locked while it is changed.

SET LOCAL lock_timeout = '2s';

DO $$
DECLARE
    short recipients;
    padded recipients;
    merged recipients;
BEGIN
    FOR short IN SELECT * FROM recipients WHERE length(dest_seq) < 8 ORDER BY id FOR UPDATE LOOP
        SELECT * INTO padded FROM recipients
        WHERE message_id = short.message_id AND dest_seq = lpad(short.dest_seq, 8, '0') FOR UPDATE;
        IF NOT FOUND THEN
            UPDATE recipients SET dest_seq = lpad(dest_seq, 8, '0') WHERE id = short.id;  -- its key's spelling, no news
            CONTINUE;
        END IF;
        -- Twins: one recipient, two rows. The merge rule decides the report; references are filled in.
        merged := merge_recipient(padded, short);
        DELETE FROM recipients WHERE id = short.id;
        UPDATE recipients SET
            type = merged.type, status = merged.status, result = merged.result, sent_at = merged.sent_at,
            price = merged.price, sms_parts = merged.sms_parts, sub_account = merged.sub_account,
            department = merged.department, job_number = merged.job_number, contact_id = merged.contact_id,
            detail = merged.detail, source = merged.source, first_seen_at = merged.first_seen_at,
            final_at = merged.final_at, reported_at = merged.reported_at,
            remote_id = coalesce(padded.remote_id, short.remote_id),
            attention = coalesce(padded.attention, short.attention),
            company = coalesce(padded.company, short.company),
            custom1 = coalesce(padded.custom1, short.custom1), custom2 = coalesce(padded.custom2, short.custom2),
            custom3 = coalesce(padded.custom3, short.custom3), custom4 = coalesce(padded.custom4, short.custom4),
            custom5 = coalesce(padded.custom5, short.custom5), custom6 = coalesce(padded.custom6, short.custom6),
            custom7 = coalesce(padded.custom7, short.custom7), custom8 = coalesce(padded.custom8, short.custom8),
            custom9 = coalesce(padded.custom9, short.custom9),
            updated_at = greatest(padded.updated_at, short.updated_at)
        WHERE id = padded.id;
    END LOOP;
    UPDATE replies SET dest_seq = lpad(dest_seq, 8, '0') WHERE length(dest_seq) < 8;
END $$;
