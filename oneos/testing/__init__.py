"""Test and benchmark support for OneOS (never imported by the runtime itself).

Modules here have no pytest dependency so benchmarks and ad-hoc scripts can
use them too; pytest fixtures built on them live under ``tests/``.

* :mod:`oneos.testing.netns` -- a throw-away multi-host network made of Linux
  network namespaces, with fault injection (link down, packet drops).
"""
