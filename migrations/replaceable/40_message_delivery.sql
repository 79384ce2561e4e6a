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
