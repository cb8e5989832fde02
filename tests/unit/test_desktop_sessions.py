"""The desktop's sessions and one-time login tokens: expiry on a fake clock, revocation, CSRF, token files."""

from __future__ import annotations

import itertools
import json
import os
import stat

import pytest
from twisted.internet import task

from oneos.desktop.sessions import (
    ABSOLUTE,
    IDLE,
    TOKEN_DIR,
    BadToken,
    LoginToken,
    SessionStore,
    new_login_token,
    read_token_file,
    sweep_token_files,
    take_token_file,
    token_file_name,
    write_token_file,
)


def store(clock: task.Clock, **kw) -> SessionStore:
    counter = itertools.count()
    return SessionStore(clock.seconds, token=lambda n: f"t{next(counter):0{n}d}", **kw)


def test_a_session_lives_while_used_and_ends_after_idle_time():
    clock = task.Clock()
    sessions = store(clock)
    s = sessions.create("ann")
    assert sessions.get(s.id) is s and s.user == "ann" and s.csrf != s.id
    clock.advance(IDLE - 1)
    assert sessions.get(s.id) is s  # touched: the idle clock starts again
    clock.advance(IDLE - 1)
    assert sessions.get(s.id, touch=False) is s
    clock.advance(1)
    assert sessions.get(s.id) is None
    assert s.revoked and len(sessions) == 0


def test_a_busy_session_still_ends_at_the_absolute_limit():
    clock = task.Clock()
    sessions = store(clock)
    s = sessions.create("ann")
    ended = []
    s.on_end.append(lambda: ended.append(s.id))
    while clock.seconds() + 600 < ABSOLUTE:
        clock.advance(600)
        assert sessions.get(s.id) is s
    clock.advance(ABSOLUTE - clock.seconds())
    assert sessions.get(s.id) is None
    assert ended == [s.id]


def test_revoke_ends_at_once_and_calls_on_end_once():
    clock = task.Clock()
    sessions = store(clock)
    s = sessions.create("ann")
    calls = []
    s.on_end.append(lambda: calls.append("ws closed"))
    assert sessions.revoke(s.id) is True
    assert calls == ["ws closed"] and sessions.get(s.id) is None
    assert sessions.revoke(s.id) is False and sessions.revoke(None) is False
    assert calls == ["ws closed"]


def test_revoke_user_and_revoke_all():
    clock = task.Clock()
    sessions = store(clock)
    a1, a2, b = sessions.create("ann"), sessions.create("ann"), sessions.create("bob")
    assert sessions.revoke_user("ann") == 2
    assert sessions.get(a1.id) is None and sessions.get(a2.id) is None and sessions.get(b.id) is b
    ended = []
    b.on_end.append(lambda: ended.append("bob"))
    assert sessions.revoke_all() == 1 and ended == ["bob"] and len(sessions) == 0


def test_the_oldest_session_is_dropped_past_the_limit():
    clock = task.Clock()
    sessions = store(clock, limit=2)
    first = sessions.create("a")
    dropped = []
    first.on_end.append(lambda: dropped.append("a"))
    clock.advance(1)
    sessions.create("b")
    clock.advance(1)
    sessions.create("c")
    assert dropped == ["a"] and len(sessions) == 2


def test_csrf_compare():
    clock = task.Clock()
    sessions = SessionStore(clock.seconds)
    s = sessions.create("ann")
    assert sessions.check_csrf(s, s.csrf)
    for wrong in (None, "", s.csrf[:-1], s.csrf + "x", s.id, "é"):
        assert not sessions.check_csrf(s, wrong)


# -- token files ----------------------------------------------------------------------------------


def test_a_token_file_is_private_and_named_by_a_digest(tmp_path):
    token = new_login_token("ann", now=1000.0)
    path = write_token_file(tmp_path, token)
    assert path.parent == tmp_path / TOKEN_DIR
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert token.token not in path.name and path.name == token_file_name(token.token)
    assert read_token_file(path.read_text()) == token
    assert token.expires == 1000.0 + 120


def test_a_token_is_taken_once(tmp_path):
    token = new_login_token("ann", now=1000.0)
    path = write_token_file(tmp_path, token)
    assert take_token_file(tmp_path, token.token, now=1001.0) == token
    assert not path.exists()
    with pytest.raises(BadToken, match="unknown, or already used"):
        take_token_file(tmp_path, token.token, now=1001.0)


def test_an_expired_token_is_refused_and_gone(tmp_path):
    token = new_login_token("ann", now=1000.0)
    path = write_token_file(tmp_path, token)
    with pytest.raises(BadToken, match="expired"):
        take_token_file(tmp_path, token.token, now=1000.0 + 120)
    assert not path.exists()


@pytest.mark.parametrize("presented", ["", "x" * 300, "nope", "é" * 40])
def test_unknown_tokens_are_refused(tmp_path, presented):
    write_token_file(tmp_path, new_login_token("ann", now=1000.0))
    with pytest.raises(BadToken):
        take_token_file(tmp_path, presented, now=1001.0)


def test_a_token_file_others_could_write_is_refused(tmp_path):
    token = new_login_token("ann", now=1000.0)
    path = write_token_file(tmp_path, token)
    path.chmod(0o644)
    with pytest.raises(BadToken, match="not a private file"):
        take_token_file(tmp_path, token.token, now=1001.0)
    assert not path.exists()


def test_a_symlinked_token_file_is_refused(tmp_path):
    token = new_login_token("ann", now=1000.0)
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text(token.encode())
    elsewhere.chmod(0o600)
    (tmp_path / TOKEN_DIR).mkdir(mode=0o700)
    os.symlink(elsewhere, tmp_path / TOKEN_DIR / token_file_name(token.token))
    with pytest.raises(BadToken):
        take_token_file(tmp_path, token.token, now=1001.0)


def test_a_file_whose_token_differs_is_refused(tmp_path):
    token = new_login_token("ann", now=1000.0)
    other = LoginToken("y" * 43, "root", 2000.0)
    path = write_token_file(tmp_path, token)
    path.write_text(other.encode())
    with pytest.raises(BadToken):
        take_token_file(tmp_path, token.token, now=1001.0)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not json",
        "[]",
        json.dumps({"token": "short", "user": "ann", "expires": 1}),
        json.dumps({"token": "x" * 43}),
    ],
)
def test_malformed_token_files(text):
    with pytest.raises(BadToken):
        read_token_file(text)


def test_sweep_removes_expired_and_broken_files_only(tmp_path):
    live = write_token_file(tmp_path, new_login_token("ann", now=1000.0))
    old = write_token_file(tmp_path, new_login_token("bob", now=500.0))
    broken = tmp_path / TOKEN_DIR / "broken.json"
    broken.write_text("{")
    assert sweep_token_files(tmp_path, now=1001.0) == 2
    assert live.exists() and not old.exists() and not broken.exists()
    assert sweep_token_files(tmp_path / "nowhere", now=0) == 0


# -- oneos desktop ---------------------------------------------------------------------------------


def _runtime_file(home, **info):
    home.mkdir(parents=True, exist_ok=True)
    (home / "runtime.json").write_text(json.dumps({"id": "solo", "pid": os.getpid(), **info}))


def test_oneos_desktop_prints_a_one_time_url(tmp_path, monkeypatch, capsys):
    from oneos.cli import desktop

    home = tmp_path / "home"
    _runtime_file(home, desktop="http://127.0.0.1:3000/")
    monkeypatch.setenv("ONEOS_HOME", str(home))
    opened = []
    monkeypatch.setattr(desktop.webbrowser, "open", lambda url: opened.append(url) or True)
    assert desktop.run(["--user", "ann", "--open"]) == 0
    url = capsys.readouterr().out.strip()
    assert url.startswith("http://127.0.0.1:3000/login?token=") and opened == [url]
    token = url.split("token=", 1)[1]
    (path,) = (home / TOKEN_DIR).iterdir()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    import time

    assert take_token_file(home, token, now=time.time()).user == "ann"


def test_oneos_desktop_says_why_it_cannot(tmp_path, monkeypatch):
    from oneos.cli import desktop

    home = tmp_path / "home"
    monkeypatch.setenv("ONEOS_HOME", str(home))
    with pytest.raises(desktop.DesktopClientError, match="no runtime is running"):
        desktop.run(["--user", "ann"])
    _runtime_file(home, desktop="")
    with pytest.raises(desktop.DesktopClientError, match="serves no desktop"):
        desktop.run(["--user", "ann"])
    _runtime_file(home, desktop="http://127.0.0.1:3000/")
    with pytest.raises(desktop.DesktopClientError, match="not a valid user name"):
        desktop.run(["--user", "Not Valid"])
