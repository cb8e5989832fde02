"""How a program name becomes an argv: pure logic, no I/O beyond PATH lookup.

As in the original OneOS, a script's interpreter follows from its extension
(``.py`` → python3, ``.js`` → node, ``.sh`` → sh); anything else must be an
executable.
"""

from __future__ import annotations

import os
import shutil

from oneos.errors import OneOSError

INTERPRETER_BY_EXTENSION = {".py": "python3", ".js": "node", ".sh": "sh"}


class ProgramError(OneOSError):
    """The program cannot be run here (missing, not executable, no interpreter)."""

    def __init__(self, message: str, kind: str = "ENOENT") -> None:
        super().__init__(message)
        self.kind = kind
        self.code = kind


def interpreter_for(program: str) -> str | None:
    """The interpreter a program needs by its extension, or None for executables."""
    return INTERPRETER_BY_EXTENSION.get(os.path.splitext(program)[1].lower())


def resolve_argv(program: str, args: list[str], path: str | None = None, cwd: str | None = None) -> list[str]:
    """Build the argv to spawn *program* with *args*, or raise ProgramError."""
    if not program:
        raise ProgramError("no program given", "EINVAL")
    interpreter = interpreter_for(program)
    if interpreter is not None:
        exe = shutil.which(interpreter, path=path)
        if exe is None:
            raise ProgramError(f"{program}: needs {interpreter}, which is not installed on this runtime", "ENOEXEC")
        script = program if os.path.isabs(program) or cwd is None else os.path.join(cwd, program)
        if not os.path.isfile(script):
            raise ProgramError(f"{program}: no such file", "ENOENT")
        return [exe, script, *args]
    if "/" in program:
        full = program if os.path.isabs(program) or cwd is None else os.path.join(cwd, program)
        if not os.path.exists(full):
            raise ProgramError(f"{program}: no such file", "ENOENT")
        if os.path.isdir(full) or not os.access(full, os.X_OK):
            raise ProgramError(f"{program}: not executable", "EACCES")
        return [full, *args]
    exe = shutil.which(program, path=path)
    if exe is None:
        raise ProgramError(f"{program}: command not found", "ENOENT")
    return [exe, *args]
