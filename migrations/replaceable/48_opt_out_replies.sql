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
