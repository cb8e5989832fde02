"""Packages whose API is imported on first use (oneos/lazyapi.py), checked in a fresh interpreter.

Importing a pure submodule must not load the package's heavy API (the file
store and Twisted for ``oneos.fs``, the parser for ``oneos.shell``); the
names still import from the package, are the submodules' own objects, and
an unknown name is the usual AttributeError.
"""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import sys
import oneos.fs.permissions, oneos.shell.throttle
assert "oneos.fs.store" not in sys.modules and "twisted" not in sys.modules, "the fs API was loaded"
assert "oneos.shell.parser" not in sys.modules, "the shell API was loaded"
from oneos.fs import Stat, open_store
from oneos.shell import parse, unparse
import oneos.fs.opening, oneos.fs.store, oneos.shell.expand, oneos.shell.parser
assert Stat is oneos.fs.store.Stat and open_store is oneos.fs.opening.open_store
assert parse is oneos.shell.parser.parse and unparse is oneos.shell.expand.unparse
assert "Stat" in vars(oneos.fs), "a name once used is a plain attribute"
try:
    oneos.fs.nothing
except AttributeError as e:
    assert "has no attribute 'nothing'" in str(e), e
else:
    raise AssertionError("an unknown name was found")
print("ok")
"""


def test_the_api_loads_on_first_use_and_pure_modules_alone_stay_light() -> None:
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60, check=False)
    assert (result.returncode, result.stdout) == (0, "ok\n"), result.stderr
