"""The read side: what the reports ask (`protocol`), and the two stores that answer it.

- `protocol`: `ReportStore`, the questions.
- `planner`: a query range as the rollup spans, exact spans and edges the SQL unnests.
- `sql`: the statements, as named constants.
- `postgres`: `PostgresReportStore`, over the rollups the projection writes.
- `memory`: `InMemoryReportStore`, every figure from the events themselves (for unit tests).
"""

from services.reports.storage.memory import InMemoryReportStore
from services.reports.storage.planner import like_pattern
from services.reports.storage.postgres import PostgresReportStore
from services.reports.storage.protocol import ReportStore

__all__ = ["InMemoryReportStore", "PostgresReportStore", "ReportStore", "like_pattern"]
