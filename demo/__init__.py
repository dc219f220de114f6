"""A demo of tornado_supertokens with the real ``supertokens-website`` SDK.

Run it with ``make demo`` (or ``python -m demo`` once the SDK bundle is
built). Configuration comes from the environment; see :mod:`demo.settings`.

Tests build the same application around their own instance::

    from demo.app import make_app
    app = make_app(st)            # st: a started tornado_supertokens.SuperTokens
"""

from .app import make_app

__all__ = ["make_app"]
