"""Who may do what to an entry of the file tree: the rules alone, no I/O.

Every entry has an ``owner`` (a user name) and ``mode`` permission bits, as
on POSIX (:class:`oneos.fs.store.Stat`).  The file-system service
(:mod:`oneos.fs.service`) asks these functions before it acts for a user.

- ``None`` is the kernel (or another trusted caller: a runtime acting for
  itself) and the user named :data:`ADMIN` (``root``) is the administrator:
  both may do anything.
- Anyone else is judged as POSIX does for a process that is not root: the
  entry's *owner* gets the owner bits (``0o700``), everyone else the *other*
  bits (``0o007``); the owner is never judged by the other bits, even when
  they grant more.
- **There are no groups.**  The group bits (``0o070``) are kept, shown by
  ``ls -l`` and changed by ``chmod`` like the others, but no user is ever a
  member of an entry's group, so they never grant anything: a non-owner is
  always "other".  ``chmod 750`` therefore means "owner only".
- ``r`` reads a file or lists a directory; ``w`` changes a file's content,
  or creates, removes and renames entries in a directory; ``x`` on a
  directory is *search*: passing through it to anything below.
- Only the owner or the admin may change an entry's mode; only the admin
  may change an owner.  The setuid/setgid bits are kept but mean nothing,
  and the sticky bit (``/tmp`` is ``0o1777``) is not enforced: whoever may
  write a directory may remove or rename any entry in it.
"""

from __future__ import annotations

#: The administrator's user name: like the kernel, never refused.
ADMIN = "root"

#: Access wanted, as in the ``rwx`` triplets (combine with ``|``).
READ = 4
WRITE = 2
EXECUTE = 1
#: ``x`` on a directory: passing through it.
SEARCH = EXECUTE

#: Every bit ``chmod`` may set: setuid, setgid, sticky and the three triplets.
PERM_MASK = 0o7777
SETUID, SETGID, STICKY = 0o4000, 0o2000, 0o1000


def privileged(user: str | None) -> bool:
    """Whether *user* bypasses every check: the kernel (None) and the admin."""
    return user is None or user == ADMIN


def permitted(user: str | None, owner: str, mode: int, want: int) -> bool:
    """Whether *user* has all of *want* (``READ | WRITE | EXECUTE`` bits) on an entry of *owner* and *mode*."""
    if privileged(user):
        return True
    granted = (mode >> 6) & 7 if user == owner else mode & 7
    return granted & want == want


def may_chmod(user: str | None, owner: str) -> bool:
    """Whether *user* may change the mode of an entry *owner* owns."""
    return privileged(user) or user == owner


def may_chown(user: str | None) -> bool:
    """Whether *user* may give an entry to someone else (the admin and the kernel only)."""
    return privileged(user)


def mode_string(kind: str, mode: int) -> str:
    """``ls -l``'s ten characters: ``drwxr-xr-x``, ``-rw-------``, ``drwxrwxrwt`` for /tmp."""
    chars = ["d" if kind == "dir" else "-"]
    for shift, special, mark in ((6, SETUID, "s"), (3, SETGID, "s"), (0, STICKY, "t")):
        bits = (mode >> shift) & 7
        chars.append("r" if bits & READ else "-")
        chars.append("w" if bits & WRITE else "-")
        x = bool(bits & EXECUTE)
        if mode & special:
            chars.append(mark if x else mark.upper())
        else:
            chars.append("x" if x else "-")
    return "".join(chars)


_WHO = {"u": 0o4700, "g": 0o2070, "o": 0o1007, "a": 0o7777}
_PERMS = "rwxXst"


def parse_mode(spec: str, current: int = 0, *, is_dir: bool = False) -> int:
    """The mode ``chmod SPEC`` gives an entry whose mode is *current*.

    *spec* is octal (``600``, ``0755``, ``1777``: the bits themselves) or
    symbolic: comma-separated clauses ``[ugoa]*[+-=][rwxXst]*`` with one or
    more operations each (``u+x``, ``go-r``, ``a=r``, ``u=rw,go=``,
    ``+x``).  No letter before the operator means ``a`` (there is no
    umask).  ``X`` is ``x`` for directories and for files that already have
    an ``x`` bit; ``s`` is setuid/setgid (for ``u``/``g``), ``t`` the sticky
    bit (for ``o``/``a``).  Raises ValueError for anything else.
    """
    if not isinstance(spec, str) or not spec:
        raise ValueError("empty mode")
    if all(c in "01234567" for c in spec):
        if len(spec) > 4:
            raise ValueError(f"{spec!r}: an octal mode has at most 4 digits")
        return int(spec, 8)
    mode = current & PERM_MASK
    for clause in spec.split(","):
        i = 0
        who = 0
        while i < len(clause) and clause[i] in "ugoa":
            who |= _WHO[clause[i]]
            i += 1
        if not who:
            who = _WHO["a"]
        if i >= len(clause) or clause[i] not in "+-=":
            raise ValueError(f"{spec!r}: expected [ugoa]*[+-=][rwxXst]* (like u+x or go-w) or octal (like 644)")
        while i < len(clause):
            op = clause[i]
            if op not in "+-=":
                raise ValueError(f"{spec!r}: {op!r} is not an operator (+, - or =)")
            i += 1
            letters = ""
            while i < len(clause) and clause[i] not in "+-=":
                if clause[i] not in _PERMS:
                    raise ValueError(f"{spec!r}: {clause[i]!r} is not a permission (r, w, x, X, s, t)")
                letters += clause[i]
                i += 1
            bits = 0
            for letter in letters:
                if letter == "r":
                    bits |= 0o444
                elif letter == "w":
                    bits |= 0o222
                elif letter == "x" or (letter == "X" and (is_dir or mode & 0o111)):
                    bits |= 0o111
                elif letter == "s":
                    bits |= SETUID | SETGID
                elif letter == "t":
                    bits |= STICKY
            bits &= who
            if op == "+":
                mode |= bits
            elif op == "-":
                mode &= ~bits
            else:
                mode = (mode & ~who) | bits
    return mode & PERM_MASK


__all__ = [
    "ADMIN",
    "EXECUTE",
    "PERM_MASK",
    "READ",
    "SEARCH",
    "WRITE",
    "may_chmod",
    "may_chown",
    "mode_string",
    "parse_mode",
    "permitted",
    "privileged",
]
