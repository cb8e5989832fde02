"""Options and arguments of built-ins: short options as ``ls -la`` or ``head -n 5`` spell them.

A misused built-in fails with the status the real command gives (scripts
test it): bash's own built-ins (``cd``, ``export``, ``source`` ...) give 2
for a bad option or a missing operand, coreutils 1 (``ls`` 2).  That is
:class:`BadUsage`, whose status the registry returns after printing the
message (:mod:`oneos.shell.builtins`).
"""

from __future__ import annotations

from oneos.shell.errors import UsageError

#: Bash's status for a built-in's usage error (a bad option, a missing operand).
STATUS_USAGE = 2


class BadUsage(UsageError):
    """Wrong options or operands, with the exit status the real command gives for them."""

    def __init__(self, message: str, status: int = STATUS_USAGE) -> None:
        super().__init__(message)
        self.status = status


def split_options(
    args: list[str], known: str, with_value: str = "", *, status: int = 1, permute: bool = True
) -> tuple[dict[str, str | bool], list[str]]:
    """Short options (``-la``, ``-n 5``, ``-n5``, ``-5`` for ``-n 5``); ``--`` ends them.

    *permute* (coreutils): options may follow operands (``wc f -l``); bash's
    built-ins stop at the first operand instead (``permute=False``).  An
    unknown option or a missing value is :class:`BadUsage` with *status*.
    """
    opts: dict[str, str | bool] = {}
    rest: list[str] = []
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--":
            rest.extend(args[i + 1 :])
            break
        if len(a) > 1 and a.startswith("-"):
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
                        raise BadUsage(f"option requires an argument -- '{c}'", status)
                    if not a[j + 1 :]:
                        i += 1
                    opts[c] = value
                    break
                if c not in known:
                    raise BadUsage(f"-{c}: invalid option", status)
                opts[c] = True
                j += 1
        else:
            if not permute:
                rest.extend(args[i:])
                break
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


def signed_count(value: str | bool | None, default: int, what: str = "lines") -> tuple[int, str]:
    """A ``head``/``tail`` count with its sign: (N, ``""``), (N, ``"-"``) for ``-N``, (N, ``"+"``) for ``+N``.

    ``head -n -2`` means all but the last 2, ``tail -n +3`` from the third
    on; a value that is not a count is "invalid number of lines" (status 1).
    """
    if value is None or value is True:
        return default, ""
    text = str(value)
    sign = text[:1] if text[:1] in "+-" else ""
    digits = text[len(sign) :]
    if not digits.isdigit() or not digits.isascii():
        raise BadUsage(f"invalid number of {what}: '{text}'", 1)
    return int(digits), sign
