"""Test-session setup shared by every test.

OneOS runs on Twisted's asyncio reactor (amqtt is asyncio-based), so the test
process installs that reactor before anything imports the default one.
Fixture modules live beside this file, one per real component they start.
"""

from twisted.internet import asyncioreactor

try:
    asyncioreactor.install()
except Exception:  # already installed (e.g. a plugin imported it first)
    pass

pytest_plugins = ["_brokers", "_mongo", "_runtimes", "_netns"]
