"""A package's API imported on first use (PEP 562 module ``__getattr__``).

Why: importing any submodule runs its package's ``__init__`` first, so a
package that re-exports its API there makes every importer of one small
pure module pay for the whole package: every runtime loaded the shell's
parser for its front door, and ``oneos devices`` loaded the file store (and
Twisted) to format permission bits.  With :func:`lazy_api` the names stay
importable from the package (``from oneos.shell import parse``) and their
modules load when a name is first used.  No Twisted here: the packages
that use this are imported by commands that must start without it.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any


def lazy_api(package: str, homes: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for *package*: each name in *homes* comes from its submodule, once."""

    def __getattr__(name: str) -> Any:
        home = homes.get(name)
        if home is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{home}"), name)
        setattr(sys.modules[package], name, value)  # the next use is a plain attribute
        return value

    return __getattr__
