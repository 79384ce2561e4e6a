-- Replies and inbound SMS, newest first when ordered by received_at.
CREATE OR REPLACE VIEW replies_inbox AS
SELECT p.received_id, p.received_at, p.type, p.from_number, p.message_text, p.message_id, p.dest_seq,
       p.sub_account, p.department, report_day(coalesce(p.received_at, p.first_seen_at)) AS day
FROM replies p;
