"""Stores: where sessions, runs, usage and each run's event log outlive a run.

- ``base``    the :class:`Store` protocol every store implements, and its records
              (:class:`RunRecord`, :class:`RunOutcome`, :class:`EventEnvelope`)
- ``memory``  :class:`MemoryStore`: dicts, lost with the process (the default)
- ``sqlite``  :class:`SqliteStore`: one SQLite file (WAL, versioned migrations, crash recovery)
- ``postgres`` :class:`PostgresStore`: PostgreSQL, shared by processes on many machines
              (extra ``[postgres]``; psycopg is imported when the store opens)

Stores import values only: never a provider, the bus or the runtime.
"""

from .base import EventEnvelope as EventEnvelope
from .base import RunOutcome as RunOutcome
from .base import RunRecord as RunRecord
from .base import RunStatus as RunStatus
from .base import Store as Store
from .memory import MemoryStore as MemoryStore
from .postgres import PostgresStore as PostgresStore
from .sqlite import SqliteStore as SqliteStore
from .sqlite import default_db_path as default_db_path

__all__ = (
    "default_db_path",
    "EventEnvelope",
    "MemoryStore",
    "PostgresStore",
    "RunOutcome",
    "RunRecord",
    "RunStatus",
    "SqliteStore",
    "Store",
)
