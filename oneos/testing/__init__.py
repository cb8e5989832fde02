"""Test and benchmark support for OneOS (never imported by the runtime itself).

Modules here have no pytest dependency so benchmarks and ad-hoc scripts can
use them too; the pytest fixtures built on them live in the conftest.py of
each test tier (tests/integration, tests/cluster).

* :mod:`~oneos.testing.brokers`, :mod:`~oneos.testing.runtimes`,
  :mod:`~oneos.testing.mongo` -- real components as child processes on
  loopback: our broker and Mosquitto, runtimes, a MongoDB-wire server;
* :mod:`~oneos.testing.netns`, :mod:`~oneos.testing.hosts` -- a throw-away
  multi-host network of Linux network namespaces with fault injection, and
  OneOS processes inside its hosts;
* :mod:`~oneos.testing.cluster`, :mod:`~oneos.testing.membroker` -- many
  real runtimes in one process on an in-memory MQTT broker and one fake
  clock (the cluster tier);
* :mod:`~oneos.testing.attacker` (a raw MQTT peer), :mod:`~oneos.testing.ssh`
  (OpenSSH command lines), :mod:`~oneos.testing.shell` (an in-memory file
  system for the interpreter).
"""
