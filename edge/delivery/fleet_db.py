"""What names a fleet database: the path of a SQLite file (one collector, the default) or a ``postgresql://`` URL
(the collectors of a group). Standard library only, so a reader that only shows a fleet (the dashboard) can tell the
two apart, and show a URL, without importing the MQTT client.

>>> is_postgres_url("postgresql://fedge:s3cret@db.example/fleet"), is_postgres_url("runs/x/edge/fleet.db")
(True, False)
>>> redacted("postgresql://fedge:s3cret@db.example/fleet?sslmode=require&password=other")
'postgresql://fedge:***@db.example/fleet?sslmode=require&password=***'
"""

from __future__ import annotations

import re
from pathlib import Path

#: ``password=...`` in a URL's query (libpq takes it there too)
_QUERY_PASSWORD = re.compile(r"([?&]password=)[^&]*")


def is_postgres_url(db: object) -> bool:
    """Whether ``db`` is a PostgreSQL connection URL (as libpq takes it), not a SQLite path."""
    return isinstance(db, str) and db.startswith(("postgresql://", "postgres://"))


def redacted(url: str) -> str:
    """``url`` without its passwords (for messages, pages and ``path``)."""
    head, sep, tail = url.partition("@")
    if sep and ":" in head.split("//", 1)[-1]:
        scheme, rest = head.split("//", 1)
        url = f"{scheme}//{rest.split(':', 1)[0]}:***@{tail}"
    return _QUERY_PASSWORD.sub(r"\1***", url)


def as_fleet_db(db: str | Path) -> str | Path:
    """``db`` as a store takes it: a URL stays a string (a :class:`~pathlib.Path` would fold its ``//``), anything
    else is a path."""
    return db if is_postgres_url(db) else Path(db)
