"""Servers the integration tests share: a throwaway PostgreSQL cluster (``initdb`` + ``pg_ctl`` on a loopback port,
in a temporary directory, stopped at the end of the session) and one fresh database per test."""

from __future__ import annotations

import itertools

import pytest

from simulations.benchmarks.common import PostgresServer, postgres_bin

_databases = itertools.count()


@pytest.fixture(scope="session")
def postgres_server():
    if postgres_bin() is None:
        pytest.skip("PostgreSQL is not installed (.ci/run installs it: apt-get install postgresql)")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip('psycopg is not installed: pip install -e ".[fleet]"')
    server = PostgresServer().start()
    yield server
    server.stop()


@pytest.fixture
def postgres_url(postgres_server) -> str:
    """The URL of an empty database of its own for this test."""
    return postgres_server.create_database(f"fleet_{next(_databases)}")
