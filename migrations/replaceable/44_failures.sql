-- Failed recipients, with the account's day and the sender's references.
CREATE OR REPLACE VIEW failures AS
SELECT r.message_id, r.dest_seq, r.destination, r.result, r.sent_at, r.sub_account, r.department,
       report_day(coalesce(r.sent_at, r.first_seen_at)) AS day, m.reference, r.remote_id
FROM recipients r JOIN messages m ON m.message_id = r.message_id
WHERE r.status = 'Failed';
