"""Benchmarks of issue 4: ``python -m bench`` (``make bench``).

Starts its own Tornado servers (one process per configuration, pinned to
CPU 0), loads them over loopback from CPU 1 (``wrk`` for plain requests, a
small asyncio client for the refresh loop), runs the in-process figures in a
pinned worker process, interleaves everything over several rounds and prints
every figure and ratio of the issue's table. See ``BENCHMARKS.md``.
"""
