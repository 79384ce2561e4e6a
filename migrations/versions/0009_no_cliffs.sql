-- 0009: no cliffs. The steps before this file (0009_no_cliffs.py, outside the transaction) built
-- replies_opt_out_keyword_idx concurrently; this transaction swaps it in and changes the functions,
-- holding webhooks up only while it runs, after a lock wait of at most lock_timeout.

SET LOCAL lock_timeout = '2s';

-- Opt-outs: a reply of 900 CJK characters (no spaces) was one 3,016-byte "word", over btree's
-- 2,704-byte key limit: replies_opt_out_idx refused the reply (a 500, and its batch with it).
-- opt_out_keyword() is bounded (at most 64 letters), and so is the keyword list.
ALTER TABLE opt_out_keywords
    ADD CONSTRAINT opt_out_keywords_keyword_length CHECK (length(keyword) BETWEEN 1 AND 64);

-- A STOP dated 2099 (a sender's clock) no longer outranks a START sent today: see credible_time().
-- Time from a sender is evidence, not authority: a report time more than a day after this service
-- received the report (a sender's clock years ahead) is ordered as if it were the time of receipt.
-- The time sent is kept as sent (sent_at, received_at) for reporting; only the order uses this.
CREATE FUNCTION credible_time(sent timestamptz, received timestamptz) RETURNS timestamptz
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN CASE WHEN sent > received + interval '24 hours' THEN received ELSE sent END;

CREATE OR REPLACE VIEW opt_outs AS
SELECT DISTINCT ON (p.from_number)
       p.from_number, k.opts_out AS opted_out, k.keyword,
       coalesce(p.received_at, p.first_seen_at) AS changed_at, p.received_id, p.message_id, p.sub_account
FROM replies p JOIN opt_out_keywords k ON k.keyword = opt_out_keyword(p.message_text)
ORDER BY p.from_number, credible_time(coalesce(p.received_at, p.first_seen_at), p.first_seen_at) DESC,
         p.received_id DESC;

DROP INDEX replies_opt_out_idx;
ALTER INDEX replies_opt_out_keyword_idx RENAME TO replies_opt_out_idx;
DROP FUNCTION opt_out_word(text);

-- Results: a Success dated 2099 outranked every later report of its recipient. The merge orders
-- reports by credible_time() of their time and their receipt (reported_at, kept for the winner).
ALTER TABLE recipients ADD COLUMN reported_at timestamptz;

-- A report's place in the merge's order, as text that sorts like it: final above Pending, then its
-- credible time, then its time as sent (two reports at one credible time: a total order), then a
-- fingerprint of its status and result text, then webhook above poll (the last character).
CREATE FUNCTION recipient_order_key(status text, sent_at timestamptz, reported_at timestamptz,
                                    result text, source text)
RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN status IN ('Success', 'Failed') THEN '1' ELSE '0' END
        || lpad(coalesce(floor(extract(epoch FROM credible_time(sent_at, reported_at)) * 1000)::bigint, 0)::text,
                15, '0')
        || lpad(coalesce(floor(extract(epoch FROM sent_at) * 1000)::bigint, 0)::text, 15, '0')
        || md5(row(status, result)::text)
        || CASE WHEN source = 'webhook' THEN '1' ELSE '0' END
$$;

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

-- apply_result() takes the report's receipt time (p_reported_at: reprocess passes the stored
-- request's; NULL: now). A new signature: the old one dropped, so that a call naming the old
-- arguments finds this one.
DROP FUNCTION apply_result(text, text, text, text, text, text, timestamptz, numeric, integer,
                           text, text, text, text, text, text);
CREATE FUNCTION apply_result(
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

DROP FUNCTION recipient_event_key(text, timestamptz, text, text);  -- recipient_order_key() now

-- The archive's days: gaps are filled (not only days after the last), in UTC whatever the
-- caller's TimeZone, and the web makes a missing day itself.
-- The range each webhook_events partition covers (-infinity/infinity for MINVALUE/MAXVALUE).
CREATE FUNCTION webhook_event_partition_ranges(OUT range_from timestamptz, OUT range_to timestamptz)
RETURNS SETOF record LANGUAGE sql STABLE AS $$
    SELECT coalesce(substring(b FROM 'FROM \(''([^'']+)''\)')::timestamptz, '-infinity'),
           coalesce(substring(b FROM 'TO \(''([^'']+)''\)')::timestamptz, 'infinity')
    FROM (SELECT pg_get_expr(c.relpartbound, c.oid) AS b
          FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
          WHERE i.inhparent = 'webhook_events'::regclass) p
$$;

-- Every missing daily partition from today to `days` days ahead (UTC), gaps included, made beside
-- the table and attached (ATTACH takes no lock that stops writes); how many were made. Called by
-- the web (when a webhook finds its day missing, and hourly), the poller, `prune` and `migrate`.
-- SECURITY DEFINER: the processes that call it need not own the table.
CREATE OR REPLACE FUNCTION ensure_webhook_event_partitions(days integer DEFAULT 14) RETURNS integer
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp SET lock_timeout = '2s' AS $$
DECLARE
    today timestamptz := date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
    day_start timestamptz;
    part text;
    made integer := 0;
BEGIN
    PERFORM pg_advisory_xact_lock(7460817345);  -- one caller at a time
    FOR n IN 0 .. days LOOP
        day_start := today + make_interval(hours => 24 * n);  -- hours: a day is 24 of them in UTC, whatever the session's zone
        CONTINUE WHEN EXISTS (SELECT FROM webhook_event_partition_ranges() r
                              WHERE r.range_from < day_start + interval '24 hours' AND r.range_to > day_start);
        part := 'webhook_events_' || to_char(day_start AT TIME ZONE 'UTC', 'YYYYMMDD');
        -- IF NOT EXISTS: a day detached and not dropped (an interrupted prune) is attached again
        EXECUTE format('CREATE TABLE IF NOT EXISTS %I (LIKE webhook_events INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', part);
        EXECUTE format('ALTER TABLE webhook_events ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                       part, day_start, day_start + interval '24 hours');
        made := made + 1;
    END LOOP;
    RETURN made;
END $$;

-- How many days after today (UTC) webhook_events has partitions for, without a gap: 0 when only
-- today's exists, -1 when not even today's (the next webhook makes it). /readyz and /metrics say it.
-- Read from the partitions' names (webhook_events_YYYYMMDD, and 0007's webhook_events_before_YYYYMMDD
-- for every day before its own): the catalog alone, so a probe never waits on a lock on the table.
CREATE FUNCTION webhook_event_days_ahead() RETURNS integer LANGUAGE plpgsql STABLE AS $$
DECLARE
    today date := (now() AT TIME ZONE 'UTC')::date;
    n integer := -1;
    days text[];
    before_day date;
BEGIN
    SELECT array_agg(c.relname),
           max(to_date(substring(c.relname FROM '^webhook_events_before_([0-9]{8})$'), 'YYYYMMDD'))
    INTO days, before_day
    FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
    WHERE i.inhparent = 'webhook_events'::regclass;
    WHILE n < 366 AND (today + n + 1 < before_day
                       OR 'webhook_events_' || to_char(today + n + 1, 'YYYYMMDD') = ANY (days)) LOOP
        n := n + 1;
    END LOOP;
    RETURN n;
END $$;
