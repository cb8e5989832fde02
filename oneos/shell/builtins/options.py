"""Options and arguments of built-ins: short options as ``ls -la`` or ``head -n 5`` spell them."""

from __future__ import annotations

from oneos.shell.errors import UsageError


def split_options(args: list[str], known: str, with_value: str = "") -> tuple[dict[str, str | bool], list[str]]:
    """Short options (``-la``, ``-n 5``, ``-n5``, ``-5`` for ``-n 5``); ``--`` ends them."""
    opts: dict[str, str | bool] = {}
    rest: list[str] = []
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--":
            rest.extend(args[i + 1 :])
            break
        if len(a) > 1 and a.startswith("-") and a != "-":
            if "n" in with_value and a[1:].isdigit():
                opts["n"] = a[1:]
                i += 1
                continue
            j = 1
            while j < len(a):
                c = a[j]
                if c in with_value:
                    value = a[j + 1 :] or (args[i + 1] if i + 1 < len(args) else None)
                    if value is None:
                        raise UsageError(f"option -{c} needs a value")
                    if not a[j + 1 :]:
                        i += 1
                    opts[c] = value
                    break
                if c not in known:
                    raise UsageError(f"unknown option -{c}")
                opts[c] = True
                j += 1
        else:
            rest.append(a)
        i += 1
    return opts, rest


def count(value: str | bool | None, default: int) -> int:
    """An option's value as a count (``-n 5``); *default* when it is absent."""
    if value is None or value is True:
        return default
    try:
        n = int(str(value))
    except ValueError:
        raise UsageError(f"{value!r} is not a number") from None
    if n < 0:
        raise UsageError(f"{value!r} is not a count")
    return n
