-- 0003: the pollers classify due messages every 30 s (needy: likely missing a result; or only a
-- confirmation) and claim from this index, instead of classifying every message at every claim.
ALTER TABLE messages ADD COLUMN poll_need text CHECK (poll_need IN ('needy', 'confirmation'));
CREATE INDEX messages_poll_queue_idx ON messages (poll_need, first_seen_at) WHERE poll_state = 'active';
