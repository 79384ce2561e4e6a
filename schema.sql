-- BestSMS receiver schema: the current schema, as `python -m receiver migrate` leaves it.
--
-- Reporting queries and dashboards read these tables directly: table and column names are a
-- public interface. `migrate` builds an empty database from this file (in the connection's
-- current schema, `public` or another) and upgrades an existing one with the migrations in
-- migrations/; a test checks that replaying every migration on an empty database gives exactly
-- this. Tables, indexes and data: a schema change is a new migration plus the same change here.
-- Functions and views: each is one file of migrations/replaceable/, which `migrate` applies when it
-- changes and `python -m migrations` copies into the generated part below (never edit that part).
--
-- Times are timestamptz (instants); BestSMS's local times are converted before they get here.

-- The schema this file builds in is the connection's current one, named nowhere: the functions
-- that pin their search_path (SECURITY DEFINER) take it FROM CURRENT, this.
SELECT set_config('search_path', format('%I, pg_temp', current_schema()), false);

CREATE TABLE messages (
    message_id       text PRIMARY KEY CHECK (length(message_id) BETWEEN 1 AND 40),
    job_number       text,
    sub_account      text,
    department       text,
    -- What BestSMS reported for the whole job, from status polls (NULL until polled).
    job_status       text,            -- Pending, Delayed, Completed, CreditHold, Unknown
    recipient_count  integer,         -- BestSMS "Count", or "Recipients" when registered
    complete_count   integer,
    success_count    integer,
    failed_count     integer,
    price            numeric,
    created_at       timestamptz,
    delayed_at       timestamptz,
    -- Poll bookkeeping: the poller's state, visible to reporting.
    poll_state       text NOT NULL DEFAULT 'active'
                     CHECK (poll_state IN ('active', 'complete', 'given_up')),
    poll_attempts    integer NOT NULL DEFAULT 0,
    next_poll_at     timestamptz,
    last_polled_at   timestamptz,
    last_poll_error  text,
    lease_until      timestamptz,
    first_seen_at    timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    -- The pollers' class of a due message, renewed every 30 s: needy (likely missing a result) or
    -- confirmation (every known recipient final); NULL until classified.
    poll_need        text CHECK (poll_need IN ('needy', 'confirmation')),
    -- A status poll succeeded but fetching the replies failed: not complete until they are fetched.
    replies_due      boolean NOT NULL DEFAULT false,
    reference        text             -- the sender's own reference (BestSMS "Reference")
);

CREATE INDEX messages_active_idx ON messages (next_poll_at) WHERE poll_state = 'active';
CREATE INDEX messages_poll_queue_idx ON messages (poll_need, first_seen_at) WHERE poll_state = 'active';
-- The poll queue in give-up order (claims start at the first message still within its time);
-- messages_poll_queue_idx stays until the code that reads it is gone (0013).
CREATE INDEX messages_poll_queue_give_up_idx ON messages (poll_need, greatest(first_seen_at, delayed_at))
    WHERE poll_state = 'active';
CREATE INDEX messages_billing_idx ON messages (sub_account, department, first_seen_at);
CREATE INDEX messages_reference_idx ON messages (reference) WHERE reference IS NOT NULL;

-- Periodic poll sweeps shared by every poller (today: 'received', the inbound SMS sweep).
CREATE TABLE poll_sweeps (
    name             text PRIMARY KEY,
    last_success_at  timestamptz,     -- the sweep covered everything received before this
    lease_until      timestamptz,     -- a poller is running it until then
    last_error       text,
    updated_at       timestamptz NOT NULL DEFAULT now()
);

-- One row per recipient of a message. dest_seq is NULL while the recipient is known only from a
-- webhook without DestSeq (a provisional row, keyed by destination); a poll later adopts it.
CREATE TABLE recipients (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    message_id     text NOT NULL REFERENCES messages (message_id),
    dest_seq       text,
    destination    text NOT NULL,
    type           text,
    status         text NOT NULL CHECK (status IN ('Success', 'Failed', 'Pending')),
    result         text,
    sent_at        timestamptz,
    price          numeric,
    sms_parts      integer,
    sub_account    text,
    department     text,
    job_number     text,
    contact_id     text,
    detail         text,
    source         text NOT NULL CHECK (source IN ('webhook', 'poll')),
    first_seen_at  timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    final_at       timestamptz,   -- when this service first learned a final status (NULL while Pending)
    -- The sender's own references for this recipient, from status polls (never blanked by a later one).
    remote_id      text,
    attention      text,
    company        text,
    custom1        text, custom2 text, custom3 text, custom4 text, custom5 text,
    custom6        text, custom7 text, custom8 text, custom9 text,
    -- When this service received the report the row holds: with sent_at, its place in the merge's
    -- order (credible_time). NULL for a row last won before migration 0009 (updated_at stands in).
    reported_at    timestamptz,
    CONSTRAINT recipients_message_dest_seq_key UNIQUE (message_id, dest_seq)
);
CREATE UNIQUE INDEX recipients_provisional_key
    ON recipients (message_id, destination) WHERE dest_seq IS NULL;
CREATE INDEX recipients_message_destination_idx ON recipients (message_id, destination);
CREATE INDEX recipients_billing_idx ON recipients (sub_account, department, sent_at);
CREATE INDEX recipients_sent_at_idx ON recipients (sent_at);

CREATE TABLE replies (
    received_id    text PRIMARY KEY CHECK (length(received_id) BETWEEN 1 AND 64),
    message_id     text REFERENCES messages (message_id),   -- NULL for SMSInbound
    dest_seq       text,                                     -- the recipient who replied, when known
    type           text NOT NULL,                            -- SMSReply or SMSInbound
    from_number    text NOT NULL,
    message_text   text,
    received_at    timestamptz,
    sub_account    text,
    department     text,
    job_number     text,
    contact_id     text,
    detail         text,
    source         text NOT NULL CHECK (source IN ('webhook', 'poll')),
    first_seen_at  timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    price          numeric                                   -- what the inbound SMS cost
);
CREATE INDEX replies_message_idx ON replies (message_id, from_number);
CREATE INDEX replies_billing_idx ON replies (sub_account, department, received_at);
CREATE INDEX replies_received_at_idx ON replies (received_at);

-- Every authenticated webhook request, in the same transaction as its effect. Partitioned by day
-- (received_at, UTC): `prune` drops whole days; ensure_webhook_event_partitions() makes them ahead.
CREATE TABLE webhook_events (
    id              bigint GENERATED ALWAYS AS IDENTITY,
    received_at     timestamptz NOT NULL DEFAULT now(),
    method          text NOT NULL,
    format          text CONSTRAINT webhook_events_format_check
                    CHECK (format IN ('json', 'xml', 'form', 'query')),  -- NULL: unsupported
    content_type    text,
    headers         jsonb NOT NULL DEFAULT '{}',   -- secrets removed
    query_string    text,                          -- APIKey/token values redacted
    body            text,                          -- APIKey/token values redacted
    kind            text CONSTRAINT webhook_events_kind_check CHECK (kind IN ('result', 'reply')),
    message_id      text,
    outcome         text NOT NULL CONSTRAINT webhook_events_outcome_check
                    CHECK (outcome IN ('applied', 'duplicate', 'stale', 'rejected')),
    error           text,
    reprocessed_at  timestamptz,
    PRIMARY KEY (id, received_at)
) PARTITION BY RANGE (received_at);
CREATE INDEX webhook_events_received_at_idx ON webhook_events (received_at);
CREATE INDEX webhook_events_rejected_idx ON webhook_events (id) WHERE outcome = 'rejected';
CREATE INDEX webhook_events_message_idx ON webhook_events (message_id);

-- The pollers' shared state, in one place: whether BestSMS refuses the token, and the backlog of
-- due messages by class. Pollers write it; /readyz and /metrics read it.
CREATE TABLE poller_state (
    id                    boolean PRIMARY KEY DEFAULT true CHECK (id),  -- one row
    unauthorized_since    timestamptz,    -- BestSMS refused BESTSMS_AUTH_TOKEN (NULL: it does not)
    unauthorized_error    text,
    backlog_needy         integer,        -- due messages likely missing a result
    backlog_confirmation  integer,        -- due messages whose known recipients are all final
    oldest_needy_at       timestamptz,    -- first_seen_at of the oldest due needy message
    measured_at           timestamptz,    -- when the backlog was counted
    updated_at            timestamptz NOT NULL DEFAULT now()
);
INSERT INTO poller_state DEFAULT VALUES;

-- Reporting ------------------------------------------------------------------------------------
--
-- Days and months are the account's (BESTSMS_TIMEZONE), whichever client asks: report_day() has
-- the zone written in, by `migrate` (which re-creates it, and rebuilds the indexes on it, when
-- BESTSMS_TIMEZONE changes). A recipient's day is that of its sent_at, or of first_seen_at when
-- BestSMS gave no time; a reply's, of its received_at, or first_seen_at.

CREATE FUNCTION report_day(t timestamptz) RETURNS date
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN (t AT TIME ZONE 'Australia/Sydney')::date;

CREATE FUNCTION report_month(t timestamptz) RETURNS date
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN date_trunc('month', report_day(t)::timestamp)::date;  -- through timestamp: inlined

CREATE INDEX recipients_report_day_idx ON recipients (report_day(coalesce(sent_at, first_seen_at)));
CREATE INDEX recipients_report_month_idx
    ON recipients (report_month(coalesce(sent_at, first_seen_at)), sub_account);
CREATE INDEX replies_report_month_idx
    ON replies (report_month(coalesce(received_at, first_seen_at)), sub_account);

-- Opt-outs (Australia's Spam Act: every message must offer a working unsubscribe). A reply opts its
-- number out, or back in, when its whole text is a keyword, case, whitespace and punctuation aside:
-- "STOP", "stop!", " Opt-out " do; "STOP please" and "Cancel my appointment" do not (the carriers'
-- and Twilio's rule: only a message of the keyword alone). A DBA may add keywords, and set them per
-- sub account: a row with a sub_account overrides the default row (sub_account NULL) for that
-- keyword there, and opts_out NULL turns the keyword off there (a clinic whose patients reply
-- CANCEL to cancel a visit).
CREATE TABLE opt_out_keywords (
    keyword    text NOT NULL CHECK (keyword = upper(keyword)),
    opts_out   boolean,             -- true: opts out; false: opts back in; NULL: not a keyword here
    sub_account text,               -- NULL: every sub account (the default)
    CONSTRAINT opt_out_keywords_keyword_length CHECK (length(keyword) BETWEEN 1 AND 64),
    CONSTRAINT opt_out_keywords_default_says CHECK (opts_out IS NOT NULL OR sub_account IS NOT NULL)
);
CREATE UNIQUE INDEX opt_out_keywords_key ON opt_out_keywords (keyword, coalesce(sub_account, ''));
INSERT INTO opt_out_keywords (keyword, opts_out) VALUES
    ('STOP', true), ('STOPALL', true), ('UNSUBSCRIBE', true), ('CANCEL', true), ('END', true),
    ('QUIT', true), ('OPTOUT', true), ('OPT OUT', true), ('START', false), ('UNSTOP', false),
    ('REVOKE', true), ('STOP ALL', true);

-- A reply's text as a keyword is spelt: upper case, punctuation and symbols dropped, whitespace one
-- space; NULL when that is longer than a keyword may be (64): the index on it holds at most 256
-- bytes a reply, whatever the text's length or script.
CREATE FUNCTION opt_out_text(t text) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN (SELECT CASE WHEN length(w) BETWEEN 1 AND 64 THEN w END
            FROM (SELECT upper(btrim(regexp_replace(regexp_replace(t, '[^[:alnum:][:space:]]', '', 'g'),
                                                    '[[:space:]]+', ' ', 'g'))) AS w) letters);

-- The few replies that are a keyword, found without reading every reply.
CREATE INDEX replies_opt_out_idx ON replies (opt_out_text(message_text));

-- The text of each migrations/replaceable/ file `migrate` last applied here.
CREATE TABLE schema_replaceables (
    name        text PRIMARY KEY,       -- the file's name, without .sql
    checksum    text NOT NULL,          -- SHA-256 of its text
    applied_at  timestamptz NOT NULL DEFAULT now()
);

-- Functions and views -------------------------------------------------------------------------

-- BEGIN generated from migrations/replaceable/ by `python -m migrations`: edit those files, not this part

-- The range each webhook_events partition covers (-infinity/infinity for MINVALUE/MAXVALUE).
CREATE OR REPLACE FUNCTION webhook_event_partition_ranges(OUT range_from timestamptz, OUT range_to timestamptz)
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
    LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT SET lock_timeout = '2s' AS $$
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
CREATE OR REPLACE FUNCTION webhook_event_days_ahead() RETURNS integer LANGUAGE plpgsql STABLE AS $$
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

CREATE OR REPLACE FUNCTION ensure_message(p_message_id text, p_job_number text,
                                          p_sub_account text, p_department text)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    -- Known, with nothing to fill in (every report after a message's first): one lookup.
    PERFORM FROM messages
    WHERE message_id = p_message_id
      AND (job_number IS NOT NULL OR p_job_number IS NULL)
      AND (sub_account IS NOT NULL OR p_sub_account IS NULL)
      AND (department IS NOT NULL OR p_department IS NULL);
    IF FOUND THEN
        RETURN;
    END IF;
    INSERT INTO messages (message_id, job_number, sub_account, department)
    VALUES (p_message_id, p_job_number, p_sub_account, p_department)
    ON CONFLICT (message_id) DO NOTHING;
    IF NOT FOUND THEN
        -- Lock the row only when there is something to fill in: a broadcast's webhooks all
        -- name the same message and must not queue behind each other.
        UPDATE messages SET job_number  = coalesce(job_number, p_job_number),
                            sub_account = coalesce(sub_account, p_sub_account),
                            department  = coalesce(department, p_department),
                            updated_at  = now()
        WHERE message_id = p_message_id
          AND ((job_number IS NULL AND p_job_number IS NOT NULL)
            OR (sub_account IS NULL AND p_sub_account IS NOT NULL)
            OR (department IS NULL AND p_department IS NOT NULL));
    END IF;
END $$;

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

-- A reply BestSMS sent without a sub account or department is billed to its message's: when the
-- message learns them (a later result, a poll, its registration), its replies that lack them
-- take them too (apply_reply does the same for a reply arriving after).
CREATE OR REPLACE FUNCTION replies_follow_message() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE replies SET sub_account = coalesce(sub_account, NEW.sub_account),
                       department = coalesce(department, NEW.department), updated_at = now()
    WHERE message_id = NEW.message_id
      AND ((sub_account IS NULL AND NEW.sub_account IS NOT NULL) OR (department IS NULL AND NEW.department IS NOT NULL));
    RETURN NULL;
END $$;

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

-- A lease (a message's or a sweep's) that no live poller holds.
CREATE OR REPLACE FUNCTION lease_free(lease_until timestamptz)
    RETURNS boolean LANGUAGE sql STABLE PARALLEL SAFE
    RETURN lease_until IS NULL OR lease_until < now();

-- Complete: every recipient final (as many final rows as BestSMS's or the registered count; an
-- unknown count is not complete) and no reply fetch left to do. A complete message is never
-- polled again.
CREATE OR REPLACE FUNCTION poll_complete(recipient_count integer, final bigint, replies_due boolean)
    RETURNS boolean LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN coalesce(recipient_count <= final, false) AND NOT replies_due;

-- Needy: likely missing a result (no recipient at all, a Pending one, or fewer final ones than the
-- count), or its replies still to fetch. A message that is not needy only wants a confirmation.
CREATE OR REPLACE FUNCTION poll_needy(recipient_count integer, known bigint, pending bigint, final bigint,
                                      replies_due boolean)
    RETURNS boolean LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN known = 0 OR pending > 0 OR coalesce(recipient_count, 0) > final OR replies_due;

-- Given up: POLL_GIVE_UP_SECONDS after the message was tracked, or after its send time when later.
CREATE OR REPLACE FUNCTION poll_given_up(first_seen_at timestamptz, delayed_at timestamptz,
                                         give_up double precision)
    RETURNS boolean LANGUAGE sql STABLE PARALLEL SAFE
    RETURN greatest(first_seen_at, delayed_at) < now() - make_interval(secs => give_up);

-- Quiet: nothing heard of the message (tracked, polled, a recipient changed) for `after` seconds
-- (POLL_AFTER_SECONDS), so a callback still on its way has had its time.
CREATE OR REPLACE FUNCTION poll_quiet(m messages, last_result_at timestamptz, after double precision)
    RETURNS boolean LANGUAGE sql STABLE PARALLEL SAFE
    RETURN greatest(m.first_seen_at, m.last_polled_at, last_result_at) <= now() - make_interval(secs => after);

-- Due: active, not leased, its back-off over, sent (a scheduled message is not polled before its
-- send time), and quiet.
CREATE OR REPLACE FUNCTION poll_due(m messages, last_result_at timestamptz, after double precision)
    RETURNS boolean LANGUAGE sql STABLE PARALLEL SAFE
    RETURN m.poll_state = 'active' AND lease_free(m.lease_until)
       AND coalesce(m.next_poll_at, '-infinity') <= now() AND coalesce(m.delayed_at, '-infinity') <= now()
       AND poll_quiet(m, last_result_at, after);

-- Live delivery figures per message, from the recipient rows (the poll's own counts are in messages).
CREATE OR REPLACE VIEW message_delivery AS
SELECT m.message_id, m.sub_account, m.department, m.job_number,
       count(r.id)                                   AS recipients,
       count(r.id) FILTER (WHERE r.status = 'Success') AS delivered,
       count(r.id) FILTER (WHERE r.status = 'Failed')  AS failed,
       count(r.id) FILTER (WHERE r.status = 'Pending') AS pending,
       sum(r.price)                                  AS price,
       min(r.sent_at)                                AS first_sent_at,
       max(r.updated_at)                             AS last_result_at
FROM messages m LEFT JOIN recipients r USING (message_id)
GROUP BY m.message_id;

-- Delivery per day, sub account and department.
CREATE OR REPLACE VIEW delivery_daily AS
SELECT report_day(coalesce(r.sent_at, r.first_seen_at)) AS day, r.sub_account, r.department,
       count(DISTINCT r.message_id) AS messages,
       count(*) AS recipients,
       count(*) FILTER (WHERE r.status = 'Success') AS delivered,
       count(*) FILTER (WHERE r.status = 'Failed') AS failed,
       count(*) FILTER (WHERE r.status = 'Pending') AS pending,
       round(count(*) FILTER (WHERE r.status = 'Success')::numeric
             / nullif(count(*) FILTER (WHERE r.status IN ('Success', 'Failed')), 0), 4) AS delivery_rate,
       sum(r.sms_parts) AS sms_parts,
       sum(r.price) AS price
FROM recipients r
GROUP BY 1, 2, 3;

-- What invoices are re-billed from: outbound (recipients) and inbound (replies) costs per month,
-- sub account and department. Sums of numeric: exact to the cent.
CREATE OR REPLACE VIEW rebilling_monthly AS
SELECT month, sub_account, department,
       sum(messages)::bigint AS messages, sum(recipients)::bigint AS recipients,
       sum(sms_parts)::bigint AS sms_parts, sum(outbound_price) AS outbound_price,
       sum(replies)::bigint AS replies, sum(inbound_price) AS inbound_price,
       sum(outbound_price) + sum(inbound_price) AS total_price
FROM (
    SELECT report_month(coalesce(r.sent_at, r.first_seen_at)) AS month, r.sub_account, r.department,
           count(DISTINCT r.message_id) AS messages, count(*) AS recipients,
           coalesce(sum(r.sms_parts), 0) AS sms_parts, coalesce(sum(r.price), 0) AS outbound_price,
           0 AS replies, 0 AS inbound_price
    FROM recipients r
    GROUP BY 1, 2, 3
    UNION ALL
    SELECT report_month(coalesce(p.received_at, p.first_seen_at)), p.sub_account, p.department,
           0, 0, 0, 0, count(*), coalesce(sum(p.price), 0)
    FROM replies p
    GROUP BY 1, 2, 3) costs
GROUP BY month, sub_account, department;

-- One row per message, for the person on call.
CREATE OR REPLACE VIEW message_status AS
SELECT m.message_id, m.sub_account, m.department, m.job_number,
       coalesce(r.recipients, 0) AS recipients, coalesce(r.delivered, 0) AS delivered,
       coalesce(r.failed, 0) AS failed, coalesce(r.pending, 0) AS pending,
       r.first_sent_at, r.last_result_at, coalesce(p.replies, 0) AS replies,
       (m.poll_state = 'complete'
        OR (m.recipient_count IS NOT NULL
            AND coalesce(r.delivered, 0) + coalesce(r.failed, 0) >= m.recipient_count)) AS complete,
       m.poll_state, m.last_poll_error, m.reference
FROM messages m
LEFT JOIN LATERAL (
    SELECT count(*) AS recipients,
           count(*) FILTER (WHERE x.status = 'Success') AS delivered,
           count(*) FILTER (WHERE x.status = 'Failed') AS failed,
           count(*) FILTER (WHERE x.status = 'Pending') AS pending,
           min(x.sent_at) AS first_sent_at, max(x.updated_at) AS last_result_at
    FROM recipients x WHERE x.message_id = m.message_id) r ON true
LEFT JOIN LATERAL (
    SELECT count(*) AS replies FROM replies y WHERE y.message_id = m.message_id) p ON true;

-- Failed recipients, with the account's day and the sender's references.
CREATE OR REPLACE VIEW failures AS
SELECT r.message_id, r.dest_seq, r.destination, r.result, r.sent_at, r.sub_account, r.department,
       report_day(coalesce(r.sent_at, r.first_seen_at)) AS day, m.reference, r.remote_id
FROM recipients r JOIN messages m ON m.message_id = r.message_id
WHERE r.status = 'Failed';

-- Replies and inbound SMS, newest first when ordered by received_at.
CREATE OR REPLACE VIEW replies_inbox AS
SELECT p.received_id, p.received_at, p.type, p.from_number, p.message_text, p.message_id, p.dest_seq,
       p.sub_account, p.department, report_day(coalesce(p.received_at, p.first_seen_at)) AS day
FROM replies p;

-- How long results took: from BestSMS's send time to this service learning the final status.
CREATE OR REPLACE VIEW delivery_latency_daily AS
SELECT report_day(coalesce(r.sent_at, r.first_seen_at)) AS day, r.sub_account,
       count(*) AS finals,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM r.final_at - r.sent_at)) AS p50_seconds,
       percentile_cont(0.9) WITHIN GROUP (ORDER BY extract(epoch FROM r.final_at - r.sent_at)) AS p90_seconds,
       percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM r.final_at - r.sent_at)) AS p99_seconds
FROM recipients r
WHERE r.final_at IS NOT NULL AND r.sent_at IS NOT NULL
GROUP BY 1, 2;

-- Delivery per day and sub account (a rate of its own: an average of departments' rates is not it).
CREATE OR REPLACE VIEW delivery_daily_by_sub_account AS
SELECT report_day(coalesce(r.sent_at, r.first_seen_at)) AS day, r.sub_account,
       count(DISTINCT r.message_id) AS messages,
       count(*) AS recipients,
       count(*) FILTER (WHERE r.status = 'Success') AS delivered,
       count(*) FILTER (WHERE r.status = 'Failed') AS failed,
       count(*) FILTER (WHERE r.status = 'Pending') AS pending,
       round(count(*) FILTER (WHERE r.status = 'Success')::numeric
             / nullif(count(*) FILTER (WHERE r.status IN ('Success', 'Failed')), 0), 4) AS delivery_rate,
       sum(r.sms_parts) AS sms_parts,
       sum(r.price) AS price
FROM recipients r
GROUP BY 1, 2;

-- Every reply that is a keyword for its sub account (that sub account's row, else the default),
-- with what it says: the opt-out history, one rule for both views below.
CREATE OR REPLACE VIEW opt_out_replies AS
SELECT p.from_number, p.sub_account, k.opts_out AS opted_out, k.keyword,
       coalesce(p.received_at, p.first_seen_at) AS changed_at, p.received_id, p.message_id,
       credible_time(coalesce(p.received_at, p.first_seen_at), p.first_seen_at) AS ordered_at
FROM opt_out_keywords k
JOIN replies p ON opt_out_text(p.message_text) = k.keyword  -- replies_opt_out_idx: the few that are keywords
WHERE (k.sub_account = p.sub_account
       OR k.sub_account IS NULL AND NOT EXISTS (SELECT FROM opt_out_keywords o
                                                WHERE o.keyword = k.keyword AND o.sub_account = p.sub_account))
  AND k.opts_out IS NOT NULL;

-- Each number's latest keyword, whatever the sub account (the columns as before 0011).
CREATE OR REPLACE VIEW opt_outs AS
SELECT DISTINCT ON (from_number) from_number, opted_out, keyword, changed_at, received_id, message_id, sub_account
FROM opt_out_replies
ORDER BY from_number, ordered_at DESC, received_id DESC;

-- Each number's latest keyword in each sub account (sub accounts that are separate senders).
CREATE OR REPLACE VIEW opt_outs_by_sub_account AS
SELECT DISTINCT ON (sub_account, from_number)
       sub_account, from_number, opted_out, keyword, changed_at, received_id, message_id
FROM opt_out_replies
ORDER BY sub_account, from_number, ordered_at DESC, received_id DESC;

-- END generated

-- Today's and the next 14 days' webhook_events partitions.
SELECT ensure_webhook_event_partitions();

-- (replies_follow_message)
CREATE TRIGGER replies_follow_message AFTER UPDATE OF sub_account, department ON messages
    FOR EACH ROW WHEN (OLD.sub_account IS DISTINCT FROM NEW.sub_account OR OLD.department IS DISTINCT FROM NEW.department)
    EXECUTE FUNCTION replies_follow_message();

-- The read-only role for reporting and dashboards (NOLOGIN: grant it to a login). Made when the
-- migrating user may create roles; else a DBA makes it, and the next migrate grants to it.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'reporting') THEN
        IF (SELECT rolcreaterole OR rolsuper FROM pg_roles WHERE rolname = current_user) THEN
            CREATE ROLE reporting NOLOGIN;
        ELSE
            RAISE NOTICE 'role reporting not created: % may not create roles', current_user;
            RETURN;
        END IF;
    END IF;
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO reporting', current_schema());
    EXECUTE format('GRANT SELECT ON ALL TABLES IN SCHEMA %I TO reporting', current_schema());
    EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA %I GRANT SELECT ON TABLES TO reporting', current_schema());
END $$;
