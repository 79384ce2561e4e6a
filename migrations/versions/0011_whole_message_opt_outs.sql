-- 0011: opt-outs by the whole message. The steps before this file (0011_whole_message_opt_outs.py,
-- outside the transaction) built opt_out_text() and replies_opt_out_text_idx concurrently; this
-- transaction swaps the index in, lets keywords be set per sub account and makes the views again.

SET LOCAL lock_timeout = '2s';

-- Keywords per sub account: a row with a sub_account overrides the row without one for that
-- keyword in that sub account; opts_out NULL there means "not a keyword in this sub account".
ALTER TABLE opt_out_keywords DROP CONSTRAINT opt_out_keywords_pkey;
ALTER TABLE opt_out_keywords ADD COLUMN sub_account text;
ALTER TABLE opt_out_keywords ALTER COLUMN opts_out DROP NOT NULL;
ALTER TABLE opt_out_keywords
    ADD CONSTRAINT opt_out_keywords_default_says CHECK (opts_out IS NOT NULL OR sub_account IS NOT NULL);
CREATE UNIQUE INDEX opt_out_keywords_key ON opt_out_keywords (keyword, coalesce(sub_account, ''));
-- The carriers' keywords as of 2025 (CTIA added REVOKE), and STOP ALL spelt as two words.
INSERT INTO opt_out_keywords (keyword, opts_out)
SELECT k, true FROM unnest(ARRAY['REVOKE', 'STOP ALL']) AS k
WHERE NOT EXISTS (SELECT FROM opt_out_keywords o WHERE o.keyword = k AND o.sub_account IS NULL);

DROP VIEW opt_outs;
DROP INDEX replies_opt_out_idx;
ALTER INDEX replies_opt_out_text_idx RENAME TO replies_opt_out_idx;
DROP FUNCTION opt_out_keyword(text);

-- Every reply that is a keyword for its sub account (that sub account's row, else the default),
-- with what it says: the opt-out history, one rule for both views below.
CREATE VIEW opt_out_replies AS
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
CREATE VIEW opt_outs AS
SELECT DISTINCT ON (from_number) from_number, opted_out, keyword, changed_at, received_id, message_id, sub_account
FROM opt_out_replies
ORDER BY from_number, ordered_at DESC, received_id DESC;

-- Each number's latest keyword in each sub account (sub accounts that are separate senders).
CREATE VIEW opt_outs_by_sub_account AS
SELECT DISTINCT ON (sub_account, from_number)
       sub_account, from_number, opted_out, keyword, changed_at, received_id, message_id
FROM opt_out_replies
ORDER BY sub_account, from_number, ordered_at DESC, received_id DESC;
