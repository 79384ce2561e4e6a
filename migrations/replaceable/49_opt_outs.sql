-- Each number's latest keyword, whatever the sub account (the columns as before 0011).
CREATE OR REPLACE VIEW opt_outs AS
SELECT DISTINCT ON (from_number) from_number, opted_out, keyword, changed_at, received_id, message_id, sub_account
FROM opt_out_replies
ORDER BY from_number, ordered_at DESC, received_id DESC;
