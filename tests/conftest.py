"""Shared fixtures: a real PostgreSQL, and instances on private tables."""

from __future__ import annotations

import copy
import os
import sys
import uuid
from pathlib import Path
from typing import Any, Awaitable, Callable, Optional

import pytest

try:  # imported here, at a shallow stack: CPython 3.11.7's parser can fail
    import hypothesis  # noqa: F401  (SystemError) when it is first imported deep
except ImportError:  # inside a test module's collection.
    pass

sys.path.insert(0, str(Path(__file__).parent))

from tornado_supertokens.supertokens import SuperTokens  # noqa: E402

import pg  # noqa: E402
from helpers import CountingPool, drop_tables, make_pool  # noqa: E402


def pytest_collection_modifyitems(config: Any, items: list) -> None:
    """Tests marked ``slow`` run only with ``RUN_SLOW=1`` or when ``-m`` names them."""
    if os.environ.get("RUN_SLOW") == "1" or "slow" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="slow: run with RUN_SLOW=1 or -m slow (make cleanup-bench)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def pg_params() -> Any:
    """Connection parameters of a PostgreSQL that answers (started if needed)."""
    params = pg.configured_params()
    if pg.answers(params):
        yield params
        return
    server, params = pg.start_embedded()
    yield params
    server.cleanup()


def deep_merge(base: dict, overrides: Optional[dict]) -> dict:
    out = copy.deepcopy(base)
    for key, value in (overrides or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


@pytest.fixture
def table_suffix() -> str:
    return uuid.uuid4().hex[:12]


@pytest.fixture
def base_config(pg_params: dict, table_suffix: str) -> dict:
    """A minimal valid config on tables private to this test."""
    return {
        "postgres": {
            **pg_params,
            "tables": {
                "signingKey": f"sk_{table_suffix}",
                "refreshTokens": f"rt_{table_suffix}",
            },
        },
        "tokens": {"refreshToken": {"renewTokenPath": "/api/refresh"}},
        "cookie": {"domain": "localhost", "secure": False},
    }


MakeInstance = Callable[..., Awaitable[SuperTokens]]


@pytest.fixture
def make_st(io_loop: Any, base_config: dict, pg_params: dict) -> Any:
    """``await make_st(overrides=None, clock=None, pool=None)`` -> a started instance.

    Every instance is closed and every table it used is dropped afterwards.
    """
    made: list[SuperTokens] = []
    tables: set[str] = set()

    async def make(overrides: Optional[dict] = None, **kwargs: Any) -> SuperTokens:
        config = deep_merge(base_config, overrides)
        tables.update(config["postgres"]["tables"].values())
        instance = await SuperTokens.create(config, **kwargs)
        made.append(instance)
        return instance

    yield make

    async def close_all() -> None:
        for instance in made:
            await instance.close()

    io_loop.run_sync(close_all)
    drop_tables(pg_params, *tables)


@pytest.fixture
def raw_pools(io_loop: Any, pg_params: dict) -> Any:
    """``await raw_pools(maxsize=10)`` -> an aiopg pool on the test database,
    closed after the test."""
    pools: list[Any] = []

    async def make(maxsize: int = 10) -> Any:
        pool = await make_pool(pg_params, maxsize)
        pools.append(pool)
        return pool

    yield make

    async def close_all() -> None:
        for pool in pools:
            if not pool.closed:
                pool.close()
                await pool.wait_closed()

    io_loop.run_sync(close_all)


@pytest.fixture
def counting_pool(raw_pools: Any) -> Any:
    """``await counting_pool(maxsize=10)`` -> a CountingPool, closed after the test."""

    async def make(maxsize: int = 10) -> CountingPool:
        return CountingPool(await raw_pools(maxsize))

    return make
