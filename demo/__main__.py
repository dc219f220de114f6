"""``python -m demo``: serve the demo (see :mod:`demo.server`)."""

from .server import main

if __name__ == "__main__":
    main()
