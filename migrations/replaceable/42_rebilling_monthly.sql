-- What invoices are re-billed from: outbound (recipients) and inbound (replies) costs per month,
-- sub account and department. Sums of numeric: exact to the cent.
CREATE OR REPLACE VIEW rebilling_monthly AS
SELECT month, sub_account, department,
       sum(messages)::bigint AS messages, sum(recipients)::bigint AS recipients,
       sum(sms_parts)::bigint AS sms_parts, sum(outbound_price) AS outbound_price,
       sum(replies)::bigint AS replies, sum(inbound_price) AS inbound_price,
       sum(outbound_price) + sum(inbound_price) AS total_price
FROM (
    SELECT report_month(coalesce(r.sent_at, r.first_seen_at)) AS month, r.sub_account, r.department,
           count(DISTINCT r.message_id) AS messages, count(*) AS recipients,
           coalesce(sum(r.sms_parts), 0) AS sms_parts, coalesce(sum(r.price), 0) AS outbound_price,
           0 AS replies, 0 AS inbound_price
    FROM recipients r
    GROUP BY 1, 2, 3
    UNION ALL
    SELECT report_month(coalesce(p.received_at, p.first_seen_at)), p.sub_account, p.department,
           0, 0, 0, 0, count(*), coalesce(sum(p.price), 0)
    FROM replies p
    GROUP BY 1, 2, 3) costs
GROUP BY month, sub_account, department;
