"""Database connections: `pool` (the web's pool, its bounds and states; the CLI's and the poller's
single connections), `watchdog` (statements bounded from the client), `embedded` (the PostgreSQL of
a local trial)."""

from .embedded import EMBEDDED_DATABASE, embedded_psql, start_embedded
from .pool import VALUE_REFUSED, Database, connect, connect_kwargs, database_state, refused_value
from .watchdog import Watchdog

__all__ = ["EMBEDDED_DATABASE", "VALUE_REFUSED", "Database", "Watchdog", "connect", "connect_kwargs",
           "database_state", "embedded_psql", "refused_value", "start_embedded"]
