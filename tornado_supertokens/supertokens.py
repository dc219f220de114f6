"""The instance: one configuration, its pool, keys, engine and cleanup job.

:func:`init` makes one and remembers it as the default for the module-level
functions; tests and multi-tenant apps may hold several at once.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Union

from .cache import DEFAULT_MAX_ENTRIES
from .cleanup import CleanupJob
from .clock import Clock, SystemClock
from .config import Config, parse_config
from .exceptions import GeneralError
from .keys import KeyManager
from .log import Logger
from .session import SessionEngine
from .storage import Storage


class SuperTokens:
    """Everything one configuration needs at run time."""

    def __init__(
        self,
        config: Config,
        storage: Storage,
        keys: KeyManager,
        engine: SessionEngine,
        cleanup: CleanupJob,
        clock: Clock,
        logger: Logger,
    ) -> None:
        self.config = config
        self.storage = storage
        self.keys = keys
        self.engine = engine
        self.cleanup = cleanup
        self.clock = clock
        self.logger = logger
        self.closed = False

    @classmethod
    async def create(
        cls,
        config: Union[Mapping[str, Any], Config],
        pool: Any = None,
        *,
        clock: Optional[Clock] = None,
        start_cleanup: bool = True,
        cache_size: int = DEFAULT_MAX_ENTRIES,
    ) -> SuperTokens:
        """Validate ``config``, connect, create tables, load keys, schedule cleanup.

        ``clock`` replaces the wall clock (tests); ``cache_size`` bounds the
        per-process cache of verified access tokens (0 disables it).
        """
        cfg = parse_config(config)
        clock = clock or SystemClock()
        logger = Logger(cfg.logging)
        storage = await Storage.open(cfg.postgres, pool)
        try:
            keys = KeyManager(storage, cfg, clock, logger)
            await keys.start()
        except BaseException:
            await storage.close()
            raise
        engine = SessionEngine(cfg, storage, keys, clock, logger, cache_size=cache_size)
        cleanup = CleanupJob(
            storage, cfg.tokens.refresh_token.removal_cronjob_interval, clock, logger,
            retire_keys=keys.delete_retired_keys,
        )
        if start_cleanup:
            cleanup.start()
        return cls(cfg, storage, keys, engine, cleanup, clock, logger)

    # -- administration (no request needed) -----------------------------------

    async def revoke_session_using_session_handle(self, session_handle: str) -> bool:
        """Delete one session; True if it existed."""
        return await self.engine.revoke_session(session_handle)

    async def revoke_all_sessions_for_user(self, user_id: Any) -> list[str]:
        """Delete every session of ``user_id``; the handles that were deleted."""
        return await self.engine.revoke_all_sessions_for_user(user_id)

    async def get_all_session_handles_for_user(self, user_id: Any) -> list[str]:
        """Handles of the live sessions of ``user_id``."""
        return await self.engine.get_all_session_handles_for_user(user_id)

    async def get_session_info(self, session_handle: str) -> Any:
        """The session's info; :class:`UnauthorisedError` if there is no such session."""
        return await self.engine.get_session_info(session_handle)

    async def update_session_info(self, session_handle: str, info: Any) -> None:
        """Replace the session's info; :class:`UnauthorisedError` if there is none."""
        await self.engine.update_session_info(session_handle, info)

    async def close(self) -> None:
        """Stop the cleanup job and close the pool if this instance opened it."""
        if self.closed:
            return
        self.closed = True
        await self.cleanup.stop()
        await self.storage.close()


class _Default:
    """Holds the instance made by the last :func:`init`."""

    instance: Optional[SuperTokens] = None


async def init(
    config: Union[Mapping[str, Any], Config],
    pool: Any = None,
    *,
    clock: Optional[Clock] = None,
) -> SuperTokens:
    """Start tornado_supertokens inside the running IOLoop; returns the instance.

    ``pool`` may be an existing aiopg pool (it is then not closed by
    :func:`close`). The instance becomes the default for module-level calls.
    """
    instance = await SuperTokens.create(config, pool, clock=clock)
    _Default.instance = instance
    return instance


async def close() -> None:
    """Close the default instance (see :func:`init`)."""
    instance, _Default.instance = _Default.instance, None
    if instance is not None:
        await instance.close()


def get_instance() -> SuperTokens:
    """The instance made by the last :func:`init`."""
    instance = _Default.instance
    if instance is None or instance.closed:
        raise GeneralError("tornado_supertokens is not initialised: await init(config) first")
    return instance
