"""Where the tests' PostgreSQL is: the configured server, else an embedded one
(see :mod:`tornado_supertokens.testing`)."""

from tornado_supertokens.testing import answers, connect
from tornado_supertokens.testing import configured_postgres as configured_params
from tornado_supertokens.testing import start_embedded_postgres as start_embedded

__all__ = ["answers", "configured_params", "connect", "start_embedded"]
