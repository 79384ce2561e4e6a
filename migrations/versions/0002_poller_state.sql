-- 0002: the pollers' shared state, in one place: whether BestSMS refuses the token, and the
-- backlog of due messages by class. Pollers write it; /readyz and /metrics read it.
CREATE TABLE poller_state (
    id                    boolean PRIMARY KEY DEFAULT true CHECK (id),  -- one row
    unauthorized_since    timestamptz,    -- BestSMS refused BESTSMS_AUTH_TOKEN (NULL: it does not)
    unauthorized_error    text,
    backlog_needy         integer,        -- due messages likely missing a result
    backlog_confirmation  integer,        -- due messages whose known recipients are all final
    oldest_needy_at       timestamptz,    -- first_seen_at of the oldest due needy message
    measured_at           timestamptz,    -- when the backlog was counted
    updated_at            timestamptz NOT NULL DEFAULT now()
);
INSERT INTO poller_state DEFAULT VALUES;
