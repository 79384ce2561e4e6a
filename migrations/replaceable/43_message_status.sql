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
