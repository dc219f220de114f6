"""tornado_supertokens.testing: the PostgreSQL the tests, demo and bench share."""

from __future__ import annotations

from tornado_supertokens.testing import answers, configured_postgres


def test_defaults_and_variables() -> None:
    assert configured_postgres({}) == {"host": "127.0.0.1", "port": 5432, "user": "postgres",
                                       "database": "test"}
    env = {"TS_PG_HOST": "db.internal", "TS_PG_PORT": "6543", "TS_PG_USER": "app",
           "TS_PG_DATABASE": "sessions", "TS_PG_PASSWORD": "s3cret"}
    assert configured_postgres(env) == {"host": "db.internal", "port": 6543, "user": "app",
                                        "database": "sessions", "password": "s3cret"}


def test_answers_is_false_where_nothing_listens(pg_params: dict) -> None:
    assert answers(pg_params)  # the suite's own server (configured or embedded)
    assert not answers({**pg_params, "host": "127.0.0.1", "port": 1})
