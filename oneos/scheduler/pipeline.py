"""The pipeline syntax of ``oneos run --pipe``: pure parsing, no I/O.

    python3 gen.py 100 @rt-1 | grep 7 @tag:fast | wc -l

Stages are separated by ``|``; words are shell-quoted (``shlex``); a trailing
``@RUNTIME`` pins a stage to a runtime, ``@tag:T`` requires a tag and
``@dev:NAME`` a device NAME in state ok on its runtime (several of each may
be given).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field

from oneos.errors import OneOSError


class PipelineSyntaxError(OneOSError):
    """The pipeline text cannot be parsed; the message says where and why."""


@dataclass(frozen=True)
class Stage:
    program: str
    args: tuple[str, ...] = ()
    runtime: str | None = None
    tags: tuple[str, ...] = field(default_factory=tuple)
    near: tuple[str, ...] = field(default_factory=tuple)


def parse_stage(words: list[str], index: int) -> Stage:
    placement: list[str] = []
    while words and words[-1].startswith("@"):
        placement.insert(0, words.pop())
    if not words:
        raise PipelineSyntaxError(f"stage {index + 1} has no program")
    runtime = None
    tags: list[str] = []
    near: list[str] = []
    for p in placement:
        if p.startswith("@tag:") and len(p) > 5:
            tags.append(p[5:])
        elif p.startswith("@dev:") and len(p) > 5:
            near.append(p[5:])
        elif len(p) > 1 and not p.startswith(("@tag:", "@dev:")):
            if runtime is not None:
                raise PipelineSyntaxError(f"stage {index + 1} names two runtimes ({runtime}, {p[1:]})")
            runtime = p[1:]
        else:
            raise PipelineSyntaxError(f"stage {index + 1}: bad placement {p!r} (use @RUNTIME, @tag:TAG or @dev:DEVICE)")
    return Stage(words[0], tuple(words[1:]), runtime, tuple(tags), tuple(near))


def parse_pipeline(text: str) -> list[Stage]:
    """Parse *text* into stages; raise PipelineSyntaxError with a clear reason."""
    lexer = shlex.shlex(text, posix=True, punctuation_chars="|")
    lexer.whitespace_split = True
    try:
        tokens = list(lexer)
    except ValueError as e:
        raise PipelineSyntaxError(f"cannot parse pipeline: {e}") from None
    stages: list[list[str]] = [[]]
    for token in tokens:
        if token == "|":
            stages.append([])
        elif set(token) == {"|"}:
            raise PipelineSyntaxError("'||' is not a pipe; use single '|' between stages")
        else:
            stages[-1].append(token)
    if not tokens:
        raise PipelineSyntaxError("empty pipeline")
    return [parse_stage(words, i) for i, words in enumerate(stages)]
