"""The poller: fetches, politely, the results and replies that webhooks missed.

Every poll goes through the same validation (bestsms.api.PollParser, which builds the same events
as webhooks) and the same merge (store.apply_many -> apply_result/apply_reply, the merge
functions of migrations/replaceable/) as webhooks. Its parts, each testable alone:

- `loop`: `Poller`, the schedule (finishing, classifying, claiming under leases) and the upkeep
- `status`: one message's status and reply pages, and the back-off to its next poll
- `sweep`: the inbound SMS sweep of /get/sms/received
- `session`: what they share (the connection, BestSMS's client, pagination, failure wording)
- `heartbeat`: the lease kept while a poll or sweep runs
"""

from .loop import Poller

__all__ = ["Poller"]
