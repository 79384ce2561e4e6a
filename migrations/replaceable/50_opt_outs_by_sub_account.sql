-- Each number's latest keyword in each sub account (sub accounts that are separate senders).
CREATE OR REPLACE VIEW opt_outs_by_sub_account AS
SELECT DISTINCT ON (sub_account, from_number)
       sub_account, from_number, opted_out, keyword, changed_at, received_id, message_id
FROM opt_out_replies
ORDER BY sub_account, from_number, ordered_at DESC, received_id DESC;
