"""The web desktop in a real browser (Chromium through Playwright) on a real 3-runtime grid.

One grid for the module: our broker (``oneospsd``) and runtimes rt-1..rt-3,
each serving the desktop on a free loopback port and sharing one SQLite
store (as ``oneos grid`` does, so the file tree follows the kernel leader).
A user made with ``oneos user add`` logs in through the page's form.  One
Chromium for the module; each test gets a fresh browser context (no
cookies, no storage) and loads the page from a runtime that is not the
kernel leader, so every action crosses the network's RPC.  What the page
shows is checked against the real CLI (``oneos ps``, ``oneos fs cat``,
``oneos status``).

Waiting is "until a condition holds, or a deadline": Playwright's
``expect`` and ``wait_for_*`` in the page, :func:`wait_for` for the CLI.

With ``ONEOS_SCREENSHOTS=1`` the tests also write the 1280x800 pictures
of docs/desktop.md ("Screenshots") into docs/img/.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from oneos.testing.brokers import BrokerProcess, start_oneospsd
from oneos.testing.browser import Browser, CuttingProxy, unavailable
from oneos.testing.runtimes import RuntimeProcess, leaders, live, statuses_or_none, wait_for

MISSING = unavailable()
pytestmark = [pytest.mark.browser, pytest.mark.skipif(MISSING is not None, reason=str(MISSING))]

RUNTIMES = ("rt-1", "rt-2", "rt-3")
USER = "ann"
PASSWORD = "browser-pw-7"
#: Playwright's waits, in milliseconds (a loaded 2-core machine runs the grid and the browser)
WAIT_MS = 20_000
SCREENSHOTS = os.environ.get("ONEOS_SCREENSHOTS") == "1"
IMAGES = Path(__file__).resolve().parents[2] / "docs" / "img"


def expect(*args: Any, **kwargs: Any) -> Any:
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(*args, **kwargs)


# -- the grid ------------------------------------------------------------------------------------------


class Grid:
    """A broker and rt-1..rt-3 with their desktops, one shared store, and the CLI pointed at them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.store = f"sqlite:///{root / 'fs.sqlite3'}"
        self.procs: dict[str, RuntimeProcess] = {}
        self.broker: BrokerProcess | None = None

    def start(self) -> None:
        self.broker = start_oneospsd(self.root / "broker")
        for rid in RUNTIMES:
            self.start_runtime(rid)

    def start_runtime(self, rid: str) -> None:
        assert self.broker is not None
        self.procs[rid] = RuntimeProcess(
            rid, self.broker.url, self.root, "--store", self.store, "--desktop", "tcp:0:interface=127.0.0.1"
        )

    @property
    def url(self) -> str:
        assert self.broker is not None
        return self.broker.url

    def logs(self) -> str:
        return "\n".join(f"== {rid}\n{p.log()[-3000:]}" for rid, p in self.procs.items())

    def cli(self, *args: str, input: bytes | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
        """``oneos COMMAND --pubsub URL ARGS...`` (bytes out); ``user`` takes its subcommand first."""
        head = list(args[:2]) if args[0] == "user" else list(args[:1])
        argv = [sys.executable, "-m", "oneos.cli.main", *head, "--pubsub", self.url, *args[len(head) :]]
        return subprocess.run(argv, input=input, capture_output=True, timeout=timeout)

    def ok(self, *args: str, input: bytes | None = None) -> bytes:
        result = self.cli(*args, input=input)
        assert result.returncode == 0, f"oneos {' '.join(args)}: {result.returncode} {result.stderr[-2000:]!r}"
        return result.stdout

    def statuses(self) -> dict[str, dict[str, Any]]:
        return statuses_or_none(self.url) or {}

    def settled(self, deadline: float = 60) -> dict[str, dict[str, Any]]:
        """Every runtime alive with its desktop, and one leader; the statuses."""

        def check() -> dict[str, dict[str, Any]] | None:
            view = self.statuses()
            whole = len(live(view)) == len(RUNTIMES) and all(s.get("desktop") for s in view.values())
            return view if whole and len(leaders(view)) == 1 else None

        return wait_for("3 live runtimes with desktops and one leader", check, deadline=deadline, logs=self.logs)

    def page_runtime(self) -> tuple[str, str]:
        """A live runtime that is not the leader, and its desktop URL (the page is served from there)."""
        view = self.settled()
        rid = sorted(rid for rid in live(view) if rid not in leaders(view))[0]
        return rid, view[rid]["desktop"]

    def ps(self, all: bool = False) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = json.loads(self.ok("ps", "--json", *(["-a"] if all else [])))
        return rows

    def agent(self, agent_id: str) -> dict[str, Any] | None:
        return next((a for a in self.ps(all=True) if a["id"] == agent_id), None)

    def kill_agents(self, *ids: str) -> None:
        """Kill those agents that still run (cleanup: errors are ignored)."""
        for agent_id in ids:
            if agent_id:
                self.cli("kill", agent_id)

    def restart(self, rid: str) -> None:
        """Start *rid* again (after a kill) on its home; its old log is kept as runtime.log.1."""
        old = self.procs[rid]
        old.stop()
        old.log_path.replace(old.log_path.with_name("runtime.log.1"))
        self.start_runtime(rid)

    def stop(self) -> None:
        for p in self.procs.values():
            try:
                p.stop()
            except Exception:
                p.kill()
        if self.broker is not None:
            self.broker.stop()


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Grid]:
    g = Grid(tmp_path_factory.mktemp("browser-grid"))
    try:
        g.start()
        g.settled()
        g.ok("user", "add", USER, "--password-stdin", input=f"{PASSWORD}\n".encode())
        yield g
    finally:
        g.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    from playwright.sync_api import expect as playwright_expect

    playwright_expect.set_options(timeout=WAIT_MS)
    b = Browser()
    try:
        yield b
    finally:
        b.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Any]:
    """A page in a fresh context (1280x800); fails the test if the page threw an uncaught exception."""
    context = browser.context(1280, 800)
    errors: list[str] = []
    try:
        p = context.new_page()
        p.set_default_timeout(WAIT_MS)
        p.on("pageerror", lambda e: errors.append(str(e)))
        yield p
    finally:
        context.close()
    assert not errors, f"the page threw: {errors}"


# -- the page --------------------------------------------------------------------------------------------


def log_in(page: Any, url: str, user: str = USER, password: str = PASSWORD) -> None:
    page.goto(url)
    page.fill("#login-user", user)
    page.fill("#login-password", password)
    page.click("#login-submit")
    expect(page.locator("[data-conn=open]")).to_be_visible()
    expect(page.locator("[data-testid=user]")).to_have_text(user)


def window(page: Any, kind: str) -> Any:
    """Open the window of *kind* from its launcher (or bring it forward); its root."""
    page.click(f"[data-launch={kind}]")
    root = page.locator(f"[data-window={kind}]")
    expect(root).to_have_count(1)
    return root


def forward(page: Any, kind: str) -> None:
    """Bring the open window of *kind* to the front with its taskbar button."""
    task = page.locator(f"[data-task-kind={kind}]")
    if task.get_attribute("aria-pressed") != "true":
        task.click()
    expect(task).to_have_attribute("aria-pressed", "true")


def screenshot(page: Any, name: str) -> None:
    """docs/img/NAME, 1280x800, when ONEOS_SCREENSHOTS=1."""
    if SCREENSHOTS:
        IMAGES.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(IMAGES / name))


# -- the tests -------------------------------------------------------------------------------------------


def test_login_refused_with_a_generic_message_then_accepted(grid: Grid, page: Any) -> None:
    _, url = grid.page_runtime()
    page.goto(url)
    expect(page.locator("#login-form")).to_be_visible()
    expect(page.locator("#login-error")).to_have_text("")
    page.fill("#login-user", USER)
    screenshot(page, "login.png")

    answers = []
    for user, password in ((USER, "not-the-password"), ("nobody-here", PASSWORD)):
        page.fill("#login-user", user)
        page.fill("#login-password", password)
        with page.expect_response(lambda r: urlsplit(r.url).path == "/api/login") as response:
            page.click("#login-submit")
        answers.append((response.value.status, response.value.json()))
        expect(page.locator("#login-error")).to_have_text("Login refused.")
        expect(page.locator("#login-password")).to_have_value("")
        expect(page.locator("[data-testid=desktop-root]")).to_have_count(0)
    # a wrong password and an unknown user get the same answer: nothing says which it was
    assert answers == [(401, {"error": "login refused", "kind": "ELOGIN"})] * 2

    page.fill("#login-user", USER)
    page.fill("#login-password", PASSWORD)
    page.click("#login-submit")
    expect(page.locator("[data-conn=open]")).to_be_visible()
    expect(page.locator("#login-form")).to_have_count(0)
    expect(page.locator("[data-testid=user]")).to_have_text(USER)
    expect(page.locator("[data-window=cluster]")).to_be_visible()  # the first login opens the Cluster window

    # the session is the cookie's: a reload comes back to the desktop, not to the form
    page.reload()
    expect(page.locator("[data-conn=open]")).to_be_visible()
    expect(page.locator("#login-form")).to_have_count(0)


def test_cluster_window_sees_the_leader_die_and_another_take_over(grid: Grid, page: Any) -> None:
    view = grid.settled()
    (leader,) = leaders(view)
    page_rt, url = grid.page_runtime()
    assert page_rt != leader
    closed: list[str] = []  # the page's websockets that closed
    page.on("websocket", lambda ws: ws.on("close", lambda _: closed.append(ws.url)))
    log_in(page, url)
    cluster = page.locator("[data-window=cluster]")
    expect(cluster.locator("[data-runtime][data-state=alive]")).to_have_count(3)
    expect(cluster.locator("[data-runtime][data-leader=true]")).to_have_count(1)
    expect(cluster.locator(f'[data-runtime="{leader}"]')).to_have_attribute("data-leader", "true")
    expect(cluster.locator("[data-testid=leader]")).to_have_text(leader)
    expect(cluster.locator("[data-testid=live-count]")).to_contain_text("3 live of 3")

    try:
        grid.procs[leader].kill()  # SIGKILL: no goodbye, the broker's will says it
        expect(cluster.locator(f'[data-runtime="{leader}"]')).to_have_attribute("data-state", "dead")
        others = cluster.locator(f'[data-runtime][data-leader=true]:not([data-runtime="{leader}"])')
        expect(others).to_have_count(1)
        expect(others).to_have_attribute("data-state", "alive")
        new_leader = others.get_attribute("data-runtime")
        expect(cluster.locator("[data-runtime][data-leader=true]")).to_have_count(1)
        expect(cluster.locator("[data-testid=leader]")).to_have_text(new_leader)
        expect(cluster.locator("[data-testid=live-count]")).to_contain_text("2 live of 3")
        # the CLI sees the same network
        wait_for("the CLI to see the new leader", lambda: leaders(grid.statuses()) == [new_leader], logs=grid.logs)

        # the page (served by a runtime that stayed) kept its websocket and still works: the file
        # tree, now served by the new leader, lists the user's home
        expect(page.locator("[data-conn=open]")).to_be_visible()
        assert closed == []
        files = window(page, "files")
        expect(files.locator("[data-testid=files-list]")).to_have_attribute("data-path-shown", f"/home/{USER}")
        expect(files.locator("[data-testid=window-error]")).to_have_count(0)
        page.locator("[data-window=files] [data-action=close]").click()
        expect(page.locator("[data-window=files]")).to_have_count(0)
        cluster.locator("[data-action=maximise]").click()
        screenshot(page, "cluster.png")
    finally:
        grid.restart(leader)
        grid.settled()


def test_pause_and_kill_from_the_processes_window(grid: Grid, page: Any) -> None:
    page_rt, url = grid.page_runtime()
    where = next(rid for rid in RUNTIMES if rid != page_rt)
    log_in(page, url)
    processes = window(page, "processes")
    processes.locator("[data-testid=proc-run]").click()
    dialog = page.locator("[data-testid=run-dialog]")
    dialog.locator("[data-testid=run-program]").fill("sleep")
    dialog.locator("[data-testid=run-args]").fill("300")
    dialog.locator("[data-testid=run-runtime]").select_option(where)
    dialog.locator("[data-testid=run-submit]").click()
    process = page.locator("[data-testid=process-window]")
    expect(process).to_have_attribute("data-state", "running")
    agent_id = process.get_attribute("data-agent-window")
    try:
        started = wait_for("oneos ps to list the program", lambda: grid.agent(agent_id), logs=grid.logs)
        assert (started["program"], started["args"], started["runtime"], started["user"]) == (
            "sleep",
            ["300"],
            where,
            USER,
        )

        forward(page, "processes")
        row = processes.locator(f'[data-agent="{agent_id}"]')
        expect(row).to_have_attribute("data-state", "running")
        row.locator("[data-action=pause]").click()
        expect(row).to_have_attribute("data-state", "paused")
        expect(row.locator("[data-action=resume]")).to_be_visible()
        wait_for("oneos ps to say paused", lambda: (grid.agent(agent_id) or {}).get("state") == "paused")
        screenshot(page, "processes.png")

        row.locator("[data-action=kill]").click()
        ended = wait_for(
            "oneos ps -a to say killed",
            lambda: (a := grid.agent(agent_id)) and a["state"] == "killed" and a,
            logs=grid.logs,
        )
        assert ended["signal"] == 15 and ended["reason"] == "killed by user", ended
        assert agent_id not in [a["id"] for a in grid.ps()]  # oneos ps without -a: gone
        shown = grid.ok("ps", "-a").decode()
        assert re.search(rf"^{agent_id}\s.*\bkilled\b", shown, re.M), shown

        # the row says killed even though proc.kill's answer (taken just after SIGTERM) may come after the event
        expect(row).to_have_attribute("data-state", "killed")
        expect(row.locator("[data-testid=exit]")).to_have_text("signal 15")
        expect(row.locator("[data-action=kill]")).to_be_disabled()
    finally:
        grid.kill_agents(agent_id)


def test_terminal_runs_ls(grid: Grid, page: Any) -> None:
    _, url = grid.page_runtime()
    log_in(page, url)
    terminal = window(page, "terminal").locator("[data-testid=terminal]")
    expect(terminal).to_have_attribute("data-term-state", "open")
    terminal.click()
    page.keyboard.type("ls /")
    page.keyboard.press("Enter")
    rows = terminal.locator(".xterm-rows > div")
    for name in ("home", "tmp"):
        expect(rows.filter(has_text=re.compile(rf"^\s*{name}/\s*$"))).to_have_count(1)
    screenshot(page, "terminal.png")


def test_upload_through_the_file_picker_is_byte_exact(grid: Grid, page: Any, tmp_path: Path) -> None:
    data = os.urandom(5 * 1024 * 1024)
    local = tmp_path / "upload-5mb.bin"
    local.write_bytes(data)
    target = f"/home/{USER}/{local.name}"
    _, url = grid.page_runtime()
    log_in(page, url)
    files = window(page, "files")
    expect(files.locator("[data-testid=files-list]")).to_have_attribute("data-path-shown", f"/home/{USER}")
    files.locator("[data-testid=files-picker]").set_input_files(str(local))
    expect(files.locator(f'[data-upload="{local.name}"]')).to_have_attribute(
        "data-upload-state", "done", timeout=60_000
    )
    expect(files.locator(f'[data-path="{target}"]')).to_have_attribute("data-kind", "file")
    screenshot(page, "files.png")
    stored = grid.ok("fs", "cat", target)
    assert (len(stored), hashlib.sha256(stored).hexdigest()) == (len(data), hashlib.sha256(data).hexdigest())


def test_editor_saves_what_oneos_fs_cat_reads(grid: Grid, page: Any) -> None:
    target = f"/home/{USER}/notes.txt"
    _, url = grid.page_runtime()
    log_in(page, url)
    files = window(page, "files")
    expect(files.locator("[data-testid=files-list]")).to_have_attribute("data-path-shown", f"/home/{USER}")
    files.locator("[data-testid=files-newfile]").click()
    page.locator("[data-testid=prompt-input]").fill("notes.txt")
    page.locator("[data-testid=prompt-ok]").click()
    editor = page.locator("[data-window=editor]")
    state = editor.locator("[data-testid=editor-state]")
    expect(state).to_have_text("new file")
    text = editor.locator("[data-testid=editor-text]")
    first = "first line\nsecond line, ünïcödé ✓\n"
    text.fill(first)
    expect(state).to_have_text("changed")
    editor.locator("[data-testid=editor-save]").click()
    expect(state).to_contain_text("saved")
    assert grid.ok("fs", "cat", target) == first.encode()

    # an edit of the saved file (written with the version it was saved as), saved with Ctrl+S
    text.press("Control+End")
    page.keyboard.type("third line\n")
    expect(state).to_have_text("changed")
    page.keyboard.press("Control+s")
    expect(state).to_contain_text("saved")
    assert grid.ok("fs", "cat", target) == (first + "third line\n").encode()
    expect(editor.locator("[data-testid=editor-stale]")).to_have_count(0)
    forward(page, "files")
    files.locator("[data-testid=files-refresh]").click()
    expect(files.locator(f'[data-path="{target}"]')).to_have_attribute("data-kind", "file")


CHUNK, CHUNKS = 80_000, 50
#: 4 MB in about 5 s, then it exits: the Pipelines window sees the pipe while it runs
PRODUCER = f"sh -c 'for i in $(seq {CHUNKS}); do head -c {CHUNK} /dev/zero; sleep 0.1; done'"


def test_pipeline_from_the_pipelines_window_counts_its_bytes(grid: Grid, page: Any) -> None:
    page_rt, url = grid.page_runtime()
    source, sink = [rid for rid in RUNTIMES if rid != page_rt]
    log_in(page, url)
    pipelines = window(page, "pipelines")
    pipelines.locator("[data-testid=pipeline-text]").fill(f"{PRODUCER} @{source} | wc -c @{sink}")
    pipelines.locator("[data-testid=pipeline-start]").click()
    links = pipelines.locator("[data-testid=pipeline-started] [data-agent-link]")
    expect(links).to_have_count(2)
    producer, counter = (links.nth(i).get_attribute("data-agent-link") for i in range(2))
    try:
        # wc's window follows its output from now on, before it can have printed the count
        links.nth(1).click()
        counter_window = page.locator(f'[data-agent-window="{counter}"]')
        expect(counter_window).to_be_visible()
        forward(page, "pipelines")

        edge = pipelines.locator(f'[data-edge="{producer}@{source}->{counter}@{sink}"]')
        page.wait_for_function(
            "sel => { const e = document.querySelector(sel); return e !== null && Number(e.dataset.bytes) > 0; }",
            arg=f'[data-edge="{producer}@{source}->{counter}@{sink}"]',
        )
        expect(pipelines.locator(f'[data-node="{producer}@{source}"]')).to_be_visible()
        expect(pipelines.locator(f'[data-node="{counter}@{sink}"]')).to_be_visible()
        screenshot(page, "pipelines.png")

        total = CHUNK * CHUNKS
        expect(edge).to_have_attribute("data-state", "exited", timeout=60_000)
        expect(edge).to_have_attribute("data-bytes", str(total))
        expect(counter_window.locator("[data-testid=output-end]")).to_have_attribute("data-status", "0")
        expect(counter_window.locator("[data-testid=output]")).to_contain_text(str(total))
        ended = {a["id"]: a for a in grid.ps(all=True) if a["id"] in (producer, counter)}
        assert {k: (a["state"], a["exit_code"], a["runtime"]) for k, a in ended.items()} == {
            producer: ("exited", 0, source),
            counter: ("exited", 0, sink),
        }
    finally:
        grid.kill_agents(producer, counter)


def test_reconnect_after_the_connection_drops(grid: Grid, page: Any) -> None:
    """The page's connections go through a proxy that cuts them all (the websocket too) and refuses new ones."""
    page_rt, url = grid.page_runtime()
    where = next(rid for rid in RUNTIMES if rid != page_rt)
    parts = urlsplit(url)
    proxy = CuttingProxy(parts.hostname or "127.0.0.1", parts.port or 80)
    sleeper = ""
    try:
        log_in(page, proxy.url)
        cluster = page.locator("[data-window=cluster]")
        expect(cluster.locator("[data-runtime][data-state=alive]")).to_have_count(3)
        agents = cluster.locator(f'[data-runtime="{where}"] [data-testid=runtime-agents]')
        expect(agents).to_have_text(re.compile(r"^\d+$"))
        before = int(agents.inner_text())
        terminal = window(page, "terminal").locator("[data-testid=terminal]")
        expect(terminal).to_have_attribute("data-term-state", "open")
        terminal.click()
        page.keyboard.type("echo before-the-cut")
        page.keyboard.press("Enter")
        rows = terminal.locator(".xterm-rows > div")
        expect(rows.filter(has_text=re.compile(r"^\s*before-the-cut\s*$"))).to_have_count(1)

        proxy.cut()
        expect(page.locator("[data-conn=closed]")).to_be_visible()
        expect(terminal).to_have_attribute("data-term-state", "detached")
        # the grid changes while the page is away
        sleeper = grid.ok("run", "--detach", "--on", where, "sleep", "300").split()[0].decode()

        proxy.restore()
        expect(page.locator("[data-conn=open]")).to_be_visible(timeout=30_000)
        # the channels are open again: the change made meanwhile shows, and so does the next one
        expect(agents).to_have_text(str(before + 1))
        grid.ok("kill", sleeper)
        expect(agents).to_have_text(str(before))
        # the terminal reattached to the same shell, with its scrollback
        expect(terminal).to_have_attribute("data-term-state", "open")
        expect(rows.filter(has_text=re.compile(r"^\s*before-the-cut\s*$"))).to_have_count(1)
        terminal.click()
        page.keyboard.type("echo after-the-cut")
        page.keyboard.press("Enter")
        expect(rows.filter(has_text=re.compile(r"^\s*after-the-cut\s*$"))).to_have_count(1)
    finally:
        grid.kill_agents(sleeper)
        proxy.close()
