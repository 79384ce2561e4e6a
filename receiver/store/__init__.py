"""Every SQL statement the service runs, each beside the typed function that runs it, by domain;
nothing else in the code writes SQL (the schema itself is in migrations/ and schema.sql).

The merge rule itself is in the database (migrations/replaceable/: apply_result, apply_reply), so
that webhooks and polls use one rule and each application is one atomic statement.

- `webhooks`: recording webhooks (group commit's one statement) and reprocessing stored ones
- `merge`: the merge functions as the code calls them (one event, or a poll page)
- `polling`: messages tracked, the poll schedule and leases, sweeps, the pollers' state
- `reports`: the CSV reports
- `housekeeping`: health, the archive's partitions, connection bounds, grants, locks, versions
"""

from .base import rows
from .housekeeping import (
    HEALTH,
    applied_replaceables,
    create_database,
    drop_old_event_partitions,
    ensure_event_partitions,
    grant_reporting,
    health,
    missing_event_partition,
    new_schema,
    ping,
    prune_events,
    schema_version,
    set_lock_timeout,
    set_session_bounds_for_migrate,
    set_statement_timeout,
    try_advisory_lock,
)
from .merge import APPLY, ARGS, apply_many
from .polling import (
    Backlog,
    Claim,
    Sweep,
    apply_references,
    claim,
    claim_sweep,
    classify,
    finish_messages,
    finish_poll,
    finish_sweep,
    now,
    renew_lease,
    renew_sweep_lease,
    track,
    update_polled_message,
    write_poller_state,
)
from .reports import REPORTS, report_csv, sub_accounts
from .webhooks import (
    RECORD_WEBHOOKS,
    Request,
    Webhook,
    events_to_reprocess,
    reapply_event,
    record_webhooks,
    rereject_event,
)

__all__ = [
    "APPLY",
    "ARGS",
    "HEALTH",
    "RECORD_WEBHOOKS",
    "REPORTS",
    "Backlog",
    "Claim",
    "Request",
    "Sweep",
    "Webhook",
    "applied_replaceables",
    "apply_many",
    "apply_references",
    "claim",
    "claim_sweep",
    "classify",
    "create_database",
    "drop_old_event_partitions",
    "ensure_event_partitions",
    "events_to_reprocess",
    "finish_messages",
    "finish_poll",
    "finish_sweep",
    "grant_reporting",
    "health",
    "missing_event_partition",
    "new_schema",
    "now",
    "ping",
    "prune_events",
    "reapply_event",
    "record_webhooks",
    "renew_lease",
    "renew_sweep_lease",
    "report_csv",
    "rereject_event",
    "rows",
    "schema_version",
    "set_lock_timeout",
    "set_session_bounds_for_migrate",
    "set_statement_timeout",
    "sub_accounts",
    "track",
    "try_advisory_lock",
    "update_polled_message",
    "write_poller_state",
]
