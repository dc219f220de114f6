"""Cookie writing helpers of the wire contract (the HTTP-level rows are in test_web.py)."""

from __future__ import annotations

from email.utils import formatdate

from hypothesis import given
from hypothesis import strategies as st

from tornado_supertokens.cookies import http_date


@given(st.integers(min_value=0, max_value=253_402_300_799_999))  # up to 9999-12-31
def test_http_date_is_what_formatdate_writes(epoch_ms: int) -> None:
    assert http_date(epoch_ms) == formatdate(epoch_ms / 1000, usegmt=True)


def test_http_date_of_the_deletion_expiry() -> None:
    assert http_date(1000) == "Thu, 01 Jan 1970 00:00:01 GMT"
    assert http_date(1999) == "Thu, 01 Jan 1970 00:00:01 GMT"
