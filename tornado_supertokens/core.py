"""Framework-agnostic operations on token strings, using the default instance.

The Tornado forms (reading and writing cookies on a handler) are the
package's top-level names; these are for other frameworks, jobs and tests.
Each returns what :class:`~tornado_supertokens.session.SessionEngine` returns.
"""

from __future__ import annotations

from typing import Any, Optional

from .session import SessionResult
from .supertokens import get_instance


async def create_new_session(
    user_id: Any, jwt_payload: Any = None, session_info: Any = None
) -> SessionResult:
    return await get_instance().engine.create_new_session(user_id, jwt_payload, session_info)


async def get_session(
    access_token: Optional[str], anti_csrf_token: Optional[str], do_anti_csrf_check: bool
) -> SessionResult:
    return await get_instance().engine.get_session(access_token, anti_csrf_token, do_anti_csrf_check)


async def refresh_session(refresh_token: Optional[str]) -> SessionResult:
    return await get_instance().engine.refresh_session(refresh_token)


async def revoke_session_using_session_handle(session_handle: str) -> bool:
    return await get_instance().revoke_session_using_session_handle(session_handle)


async def revoke_all_sessions_for_user(user_id: Any) -> list[str]:
    return await get_instance().revoke_all_sessions_for_user(user_id)


async def get_all_session_handles_for_user(user_id: Any) -> list[str]:
    return await get_instance().get_all_session_handles_for_user(user_id)


async def get_session_info(session_handle: str) -> Any:
    return await get_instance().get_session_info(session_handle)


async def update_session_info(session_handle: str, info: Any) -> None:
    await get_instance().update_session_info(session_handle, info)
