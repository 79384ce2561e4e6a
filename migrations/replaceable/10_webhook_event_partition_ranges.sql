-- The range each webhook_events partition covers (-infinity/infinity for MINVALUE/MAXVALUE).
CREATE OR REPLACE FUNCTION webhook_event_partition_ranges(OUT range_from timestamptz, OUT range_to timestamptz)
RETURNS SETOF record LANGUAGE sql STABLE AS $$
    SELECT coalesce(substring(b FROM 'FROM \(''([^'']+)''\)')::timestamptz, '-infinity'),
           coalesce(substring(b FROM 'TO \(''([^'']+)''\)')::timestamptz, 'infinity')
    FROM (SELECT pg_get_expr(c.relpartbound, c.oid) AS b
          FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
          WHERE i.inhparent = 'webhook_events'::regclass) p
$$;
