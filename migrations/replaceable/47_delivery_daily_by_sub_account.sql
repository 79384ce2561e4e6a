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
