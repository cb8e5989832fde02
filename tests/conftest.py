"""Test-session setup shared by every test.

OneOS runs on Twisted's asyncio reactor (amqtt is asyncio-based), so the test
process installs that reactor before anything imports the default one.
The tiers live in unit/ (pure code, fake reactors), cluster/ (in-process runtimes on
an in-memory broker) and integration/ (real processes; its conftest.py holds the
fixtures that start them, built on :mod:`oneos.testing`).
"""

from twisted.internet import asyncioreactor

try:
    asyncioreactor.install()
except Exception:  # already installed (e.g. a plugin imported it first)
    pass

import os
import shutil
import tempfile

import pytest


@pytest.fixture(scope="session", autouse=True)
def private_oneos_home():
    """Every ``oneos``/``oneosd`` a test starts without its own ONEOS_HOME uses an empty one of the session's,
    never the real ~/.oneos (whose credentials would decide which networks a test may join)."""
    before = os.environ.get("ONEOS_HOME")
    home = tempfile.mkdtemp(prefix="oneos-session-home-")
    os.environ["ONEOS_HOME"] = home
    yield home
    if before is None:
        os.environ.pop("ONEOS_HOME", None)
    else:
        os.environ["ONEOS_HOME"] = before
    shutil.rmtree(home, ignore_errors=True)
