-- How long results took: from BestSMS's send time to this service learning the final status.
CREATE OR REPLACE VIEW delivery_latency_daily AS
SELECT report_day(coalesce(r.sent_at, r.first_seen_at)) AS day, r.sub_account,
       count(*) AS finals,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM r.final_at - r.sent_at)) AS p50_seconds,
       percentile_cont(0.9) WITHIN GROUP (ORDER BY extract(epoch FROM r.final_at - r.sent_at)) AS p90_seconds,
       percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM r.final_at - r.sent_at)) AS p99_seconds
FROM recipients r
WHERE r.final_at IS NOT NULL AND r.sent_at IS NOT NULL
GROUP BY 1, 2;
