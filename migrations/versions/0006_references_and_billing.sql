-- 0006: the sender's own references (messages.reference; recipients.remote_id, attention, company,
-- custom1..9), replies billed to their message's sub account when BestSMS leaves it empty (now and
-- whenever the message learns it), and the views billing asks for: a day on failures and replies,
-- delivery by sub account, opt-outs.
--
-- Compatible with the code before it: new columns are nullable, and views only gain columns (at
-- their end). apply_reply (0005) gives a new reply its message's sub account; the trigger below
-- covers a message that learns it later.

ALTER TABLE messages ADD COLUMN reference text;
CREATE INDEX messages_reference_idx ON messages (reference) WHERE reference IS NOT NULL;
ALTER TABLE recipients
    ADD COLUMN remote_id text, ADD COLUMN attention text, ADD COLUMN company text,
    ADD COLUMN custom1 text, ADD COLUMN custom2 text, ADD COLUMN custom3 text, ADD COLUMN custom4 text,
    ADD COLUMN custom5 text, ADD COLUMN custom6 text, ADD COLUMN custom7 text, ADD COLUMN custom8 text,
    ADD COLUMN custom9 text;

-- Replies stored before this without a sub account or department take their message's.
UPDATE replies p SET sub_account = coalesce(p.sub_account, m.sub_account),
                     department = coalesce(p.department, m.department), updated_at = now()
FROM messages m
WHERE m.message_id = p.message_id
  AND ((p.sub_account IS NULL AND m.sub_account IS NOT NULL) OR (p.department IS NULL AND m.department IS NOT NULL));

-- A reply BestSMS sent without a sub account or department is billed to its message's: when the
-- message learns them (a later result, a poll, its registration), its replies that lack them
-- take them too (apply_reply does the same for a reply arriving after).
CREATE FUNCTION replies_follow_message() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE replies SET sub_account = coalesce(sub_account, NEW.sub_account),
                       department = coalesce(department, NEW.department), updated_at = now()
    WHERE message_id = NEW.message_id
      AND ((sub_account IS NULL AND NEW.sub_account IS NOT NULL) OR (department IS NULL AND NEW.department IS NOT NULL));
    RETURN NULL;
END $$;

CREATE TRIGGER replies_follow_message AFTER UPDATE OF sub_account, department ON messages
    FOR EACH ROW WHEN (OLD.sub_account IS DISTINCT FROM NEW.sub_account OR OLD.department IS DISTINCT FROM NEW.department)
    EXECUTE FUNCTION replies_follow_message();

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

-- Delivery per day and sub account (a rate of its own: an average of departments' rates is not it).
CREATE VIEW delivery_daily_by_sub_account AS
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

-- Opt-outs (Australia's Spam Act: every message must offer a working unsubscribe). A reply whose
-- first word (case aside, punctuation aside) is one of these keywords opts its number out, or back
-- in; a DBA may add keywords. `opt_outs` has one row per number that ever sent one: the latest wins.
CREATE TABLE opt_out_keywords (
    keyword    text PRIMARY KEY CHECK (keyword = upper(keyword)),
    opts_out   boolean NOT NULL     -- true: opts out; false: opts back in
);
INSERT INTO opt_out_keywords (keyword, opts_out) VALUES
    ('STOP', true), ('STOPALL', true), ('UNSUBSCRIBE', true), ('CANCEL', true), ('END', true),
    ('QUIT', true), ('OPTOUT', true), ('OPT OUT', true), ('START', false), ('UNSTOP', false);

-- The keyword a reply's text starts with, as opt_out_keywords spells it ('OPT OUT' is two words).
CREATE FUNCTION opt_out_word(t text) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN (SELECT CASE WHEN w ~ '^\s*OPT\s+OUT\M' THEN 'OPT OUT' ELSE (regexp_match(w, '^\s*([[:alpha:]]+)'))[1] END
            FROM (SELECT upper(regexp_replace(t, '[^[:alpha:][:space:]]', '', 'g')) AS w) letters);

-- The few replies that start with a keyword, found without reading every reply.
CREATE INDEX replies_opt_out_idx ON replies (opt_out_word(message_text));

CREATE VIEW opt_outs AS
SELECT DISTINCT ON (p.from_number)
       p.from_number, k.opts_out AS opted_out, k.keyword,
       coalesce(p.received_at, p.first_seen_at) AS changed_at, p.received_id, p.message_id, p.sub_account
FROM replies p JOIN opt_out_keywords k ON k.keyword = opt_out_word(p.message_text)
ORDER BY p.from_number, coalesce(p.received_at, p.first_seen_at) DESC, p.received_id DESC;
