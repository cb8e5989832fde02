"""The desktop's Devices window in a real browser (Chromium through Playwright) on a real 2-runtime grid.

rt-1 (the kernel) serves the page; rt-2 (no kernel services) has the
devices, so every frame and every write crosses from one runtime to the
other: an ffmpeg lavfi test camera, GPIO mock pins (an output wired to an
input, so what the window writes can be read back), all owned by the
user who logs in, and a second camera left at its default owner (the
runtimes' OS account) and mode 0600, which that user may not read.  What
the window shows is checked against the real CLI (``oneos devices``).

Waiting is "until a condition holds, or a deadline": Playwright's
``expect`` and ``wait_for_function`` in the page, :func:`wait_for` for the
CLI.  With ``ONEOS_SCREENSHOTS=1`` the first test writes docs/img/devices.png.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from oneos.testing.brokers import BrokerProcess, start_oneospsd
from oneos.testing.browser import Browser, unavailable
from oneos.testing.runtimes import RuntimeProcess, live, statuses_or_none, wait_for

MISSING = unavailable()
if MISSING is None and shutil.which("ffmpeg") is None:
    MISSING = "ffmpeg is not installed (apt-get install ffmpeg)"
if MISSING is None and __import__("importlib").util.find_spec("gpiozero") is None:
    MISSING = "gpiozero is not installed (the test extra)"
pytestmark = [pytest.mark.browser, pytest.mark.skipif(MISSING is not None, reason=str(MISSING))]

USER = "ann"
PASSWORD = "devices-pw-3"
WAIT_MS = 20_000
SCREENSHOTS = os.environ.get("ONEOS_SCREENSHOTS") == "1"
IMAGES = Path(__file__).resolve().parents[2] / "docs" / "img"
CAMERA = "format=lavfi,input=testsrc=size=320x240:rate=10,quality=6"
DEVICES = (
    *("--device", f"cam0:in:video:{CAMERA},owner={USER}"),
    *("--device", f"led:out:gpio:pin=17,mock=1,mock_wire=27,owner={USER}"),
    *("--device", f"button:in:gpio:pin=27,mock=1,owner={USER}"),
    # the runtime's account's alone (the default owner and mode 0600)
    *("--device", "secret:in:video:format=lavfi,input=testsrc=size=64x48:rate=5"),
)


def expect(*args: Any, **kwargs: Any) -> Any:
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(*args, **kwargs)


class Grid:
    """Our broker, rt-1 (kernel, serves the page) and rt-2 (the devices), and the CLI pointed at them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.broker: BrokerProcess | None = None
        self.procs: dict[str, RuntimeProcess] = {}

    def start(self) -> None:
        self.broker = start_oneospsd(self.root / "broker")
        self.procs["rt-1"] = RuntimeProcess("rt-1", self.url, self.root, "--kernel")
        self.start_devices()

    def start_devices(self) -> None:
        self.procs["rt-2"] = RuntimeProcess("rt-2", self.url, self.root, "--no-kernel", *DEVICES)

    @property
    def url(self) -> str:
        assert self.broker is not None
        return self.broker.url

    def logs(self) -> str:
        return "\n".join(f"== {rid}\n{p.log()[-3000:]}" for rid, p in self.procs.items())

    def cli(self, *args: str, input: bytes | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
        """``oneos ARGS... --pubsub URL`` from rt-1's machine (its home)."""
        argv = [sys.executable, "-m", "oneos.cli.main", *args, "--pubsub", self.url]
        env = dict(os.environ, ONEOS_HOME=str(self.procs["rt-1"].home))
        return subprocess.run(argv, input=input, capture_output=True, timeout=timeout, env=env)

    def ok(self, *args: str, input: bytes | None = None) -> bytes:
        result = self.cli(*args, input=input)
        assert result.returncode == 0, f"oneos {' '.join(args)}: {result.returncode} {result.stderr[-2000:]!r}"
        return result.stdout

    def settled(self) -> dict[str, dict[str, Any]]:
        """Both runtimes alive, rt-1 with its desktop and rt-2 with its devices; the statuses."""

        def check() -> dict[str, dict[str, Any]] | None:
            view = statuses_or_none(self.url) or {}
            up = len(live(view)) == 2 and view["rt-1"].get("desktop") and len(view["rt-2"].get("devices") or []) == 4
            return view if up else None

        return wait_for("rt-1 with its desktop and rt-2 with its devices", check, deadline=60, logs=self.logs)

    def detail(self, name: str) -> dict[str, Any]:
        """``oneos devices --detail --json``'s record of rt-2's device *name*."""
        rows = json.loads(self.ok("devices", "--detail", "--json"))
        return next(d for d in rows if (d["runtime"], d["name"]) == ("rt-2", name))

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
    g = Grid(tmp_path_factory.mktemp("devices-browser"))
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


def open_devices(page: Any, grid: Grid) -> Any:
    """Log in on rt-1's desktop and open the Devices window; its root."""
    page.goto(grid.settled()["rt-1"]["desktop"])
    page.fill("#login-user", USER)
    page.fill("#login-password", PASSWORD)
    page.click("#login-submit")
    expect(page.locator("[data-conn=open]")).to_be_visible()
    page.click("[data-launch=devices]")
    devices = page.locator("[data-window=devices]")
    expect(devices).to_have_count(1)
    return devices


def frames_drawn(page: Any, address: str) -> int:
    return int(
        page.locator(f'[data-device-view="{address}"] [data-testid=device-preview]').get_attribute("data-frames")
    )


def picture(page: Any, address: str) -> str:
    """What the preview's canvas shows now, as a PNG data URL."""
    return str(
        page.evaluate(
            "sel => document.querySelector(sel).toDataURL()",
            f'[data-device-view="{address}"] [data-testid=device-preview]',
        )
    )


def test_the_window_lists_every_device_and_previews_the_camera_live(grid: Grid, page: Any) -> None:
    devices = open_devices(page, grid)
    rows = devices.locator("[data-device]")
    expect(rows).to_have_count(4)
    cam = devices.locator('[data-device="rt-2/cam0"]')
    expect(cam).to_have_attribute("data-driver", "video")
    expect(cam).to_have_attribute("data-direction", "in")
    expect(cam.locator("[data-testid=device-state]")).to_have_text("ok")
    expect(devices.locator('[data-device="rt-2/led"]')).to_have_attribute("data-direction", "out")
    expect(cam.locator("[data-testid=device-readers]")).to_have_text("0")
    assert grid.detail("cam0")["readers"] == 0

    cam.locator("[data-action=preview]").click()
    view = devices.locator('[data-device-view="rt-2/cam0"]')
    expect(view).to_have_attribute("data-view-state", "live")
    preview = view.locator("[data-testid=device-preview]")
    page.wait_for_function(
        "sel => { const c = document.querySelector(sel); return c && c.width === 320 && Number(c.dataset.frames) >= 3 }",
        arg='[data-device-view="rt-2/cam0"] [data-testid=device-preview]',
    )
    assert preview.get_attribute("height") == "240"
    # the picture moves: testsrc's counter changes with every frame
    first, seen = picture(page, "rt-2/cam0"), frames_drawn(page, "rt-2/cam0")
    page.wait_for_function(
        "([sel, n]) => Number(document.querySelector(sel).dataset.frames) >= n",
        arg=['[data-device-view="rt-2/cam0"] [data-testid=device-preview]', seen + 3],
    )
    assert picture(page, "rt-2/cam0") != first
    expect(view.locator("[data-testid=device-fps]")).not_to_have_text("0.0 fps")
    # one reader on rt-2, as the window and the CLI both say
    wait_for("rt-2 to count the desktop's reader", lambda: grid.detail("cam0")["readers"] == 1, logs=grid.logs)
    expect(cam.locator("[data-testid=device-readers]")).to_have_text("1")
    screenshot_devices(page, devices)

    # closing the preview closes the stream at once: the reader leaves rt-2
    view.locator("[data-action=close-view]").click()
    expect(view).to_have_count(0)
    wait_for("rt-2 to see the reader leave", lambda: grid.detail("cam0")["readers"] == 0, deadline=10, logs=grid.logs)


def screenshot_devices(page: Any, devices: Any) -> None:
    """docs/img/devices.png, 1280x800, when ONEOS_SCREENSHOTS=1: the window maximised, the camera live,
    the button watched."""
    if not SCREENSHOTS:
        return
    devices.locator('[data-device="rt-2/button"] [data-action=watch]').click()
    expect(devices.locator('[data-device-view="rt-2/button"] [data-testid=device-value]')).to_have_text("0")
    devices.locator("[data-action=maximise]").click()
    IMAGES.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(IMAGES / "devices.png"))
    devices.locator("[data-action=maximise]").click()
    devices.locator('[data-device-view="rt-2/button"] [data-action=close-view]').click()


def test_a_gpio_output_toggled_in_the_window_reads_back_on_the_wired_input(grid: Grid, page: Any) -> None:
    devices = open_devices(page, grid)
    button = devices.locator('[data-device="rt-2/button"]')
    led = devices.locator('[data-device="rt-2/led"]')
    button.locator("[data-action=watch]").click()
    value = devices.locator('[data-device-view="rt-2/button"] [data-testid=device-value]')
    expect(value).to_have_text("0")
    try:
        led.locator("[data-action=set-1]").click()
        expect(value).to_have_text("1")
        expect(devices.locator("[data-testid=device-note]")).to_have_text("rt-2/led: wrote 2 B")
        assert grid.ok("devices", "cat", "rt-2/button", "--lines", "1").strip() == b"1"
        expect(led.locator("[data-testid=device-row-value]")).to_have_text("1")
        expect(led.locator("[data-action=set-1]")).to_have_attribute("aria-pressed", "true")
        led.locator("[data-action=set-0]").click()
        expect(value).to_have_text("0")
        assert grid.ok("devices", "cat", "rt-2/button", "--lines", "1").strip() == b"0"
    finally:
        grid.cli("devices", "write", "rt-2/led", input=b"0\n")


def test_a_device_the_user_may_not_read_is_refused_in_plain_words(grid: Grid, page: Any) -> None:
    devices = open_devices(page, grid)
    secret = devices.locator('[data-device="rt-2/secret"]')
    expect(secret.locator("[data-testid=device-state]")).to_have_text("ok")
    secret.locator("[data-action=preview]").click()
    view = devices.locator('[data-device-view="rt-2/secret"]')
    expect(view).to_have_attribute("data-view-state", "failed")
    error = view.locator("[data-testid=device-error]")
    expect(error).to_have_attribute("data-kind", "EACCES")
    expect(error).to_contain_text("permission denied")
    expect(error).to_contain_text(USER)
    assert "Traceback" not in error.inner_text()
    # the window goes on: the camera the user owns still previews
    devices.locator('[data-device="rt-2/cam0"] [data-action=preview]').click()
    expect(devices.locator('[data-device-view="rt-2/cam0"]')).to_have_attribute("data-view-state", "live")
    assert grid.detail("secret")["readers"] == 0


def test_the_camera_s_runtime_dying_mid_preview_ends_it_with_the_reason(grid: Grid, page: Any) -> None:
    devices = open_devices(page, grid)
    devices.locator('[data-device="rt-2/cam0"] [data-action=preview]').click()
    view = devices.locator('[data-device-view="rt-2/cam0"]')
    page.wait_for_function(
        "sel => { const c = document.querySelector(sel); return c && Number(c.dataset.frames) >= 2 }",
        arg='[data-device-view="rt-2/cam0"] [data-testid=device-preview]',
    )
    try:
        grid.procs["rt-2"].kill()  # SIGKILL: the broker's will says it
        expect(view).to_have_attribute("data-view-state", "failed")
        error = view.locator("[data-testid=device-error]")
        expect(error).to_have_attribute("data-kind", "EPIPE")
        expect(error).to_contain_text("rt-2")
        # its devices leave the list with it; the page itself is fine
        expect(devices.locator("[data-device]")).to_have_count(0)
        expect(page.locator("[data-conn=open]")).to_be_visible()
    finally:
        grid.procs["rt-2"].stop()
        grid.start_devices()
        grid.settled()
    # back: listed again, and Retry previews it
    expect(devices.locator('[data-device="rt-2/cam0"]')).to_have_count(1)
    view.locator("[data-action=retry]").click()
    expect(view).to_have_attribute("data-view-state", "live")
