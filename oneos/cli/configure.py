"""``oneos configure``: write ``$ONEOS_HOME/config.json`` by answering questions.

Like the original's first run, it asks for each setting, shows the current
value as the default, validates every answer on the spot and asks again when
one is invalid, then writes the file atomically.

It also repairs a broken ``config.json``: a field that does not validate is
named (the :class:`ConfigError` message), every valid field stays the default
answer and the bad one is asked again; a file that is not JSON at all is kept
as ``config.json.broken`` and the questions start from the defaults.

Scripted use (stdin not a terminal) reads one answer per line; when the input
ends after at least one answer, the remaining questions keep their defaults.
On a terminal, end of input or Ctrl-C stops without writing anything.
"""

from __future__ import annotations

import argparse
import copy
import re
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from oneos.config import (
    CONFIG_FILE,
    DEVICE_DRIVERS,
    DEVICE_SPEC_FORM,
    Config,
    check_known_drivers,
    is_loopback,
    oneos_home,
    parse_device_spec,
    read_config_file,
    save_config,
    validate_devices,
    with_changes,
)
from oneos.errors import ConfigError
from oneos.pubsub.address import parse_broker_url
from oneos.security import credentials

SUMMARY = "answer a few questions to write $ONEOS_HOME/config.json"
INTRO = "Enter keeps the answer in [brackets]; '-' leaves a setting blank."
BROKEN_SUFFIX = ".broken"
#: settings where a blank answer means something ('-' gives it when the current value is not blank)
CLEARABLE = ("id", "store", "tags")

Ask = Callable[[str], str]
Say = Callable[[str], None]

#: (setting, question, how to show the current value)
QUESTIONS: list[tuple[str, str, Callable[[Config], str]]] = [
    ("id", "Runtime id (blank for a random one)", lambda c: "" if c.generated_id else c.id),
    ("pubsub", "Pubsub broker URL", lambda c: c.pubsub),
    (
        "store",
        "File store: blank = the network's store, or one hosted here under $ONEOS_HOME if the network has none;"
        " or sqlite:///PATH, mongodb://HOST:PORT/DB",
        # a file written before blank meant this names the local store explicitly: offer blank instead
        lambda c: "" if c.store == c.local_store else c.store,
    ),
    ("memory_mb", "Memory limit for agents, MB", lambda c: str(c.memory_mb)),
    ("kernel", "Host kernel services if elected? (yes/no)", lambda c: "yes" if c.kernel else "no"),
    ("tags", "Tags, comma-separated", lambda c: ",".join(c.tags)),
]

#: Settings the interview does not ask about, asked only to repair an invalid value.
REPAIR_QUESTIONS: dict[str, str] = {
    "broker": "Broker mode (auto, embedded, external)",
    "keepalive": "MQTT keepalive, seconds",
    "stats_interval": "Seconds between status updates",
}


def interview(
    config: Config,
    ask: Ask,
    say: Say,
    *,
    detect: Callable[[str], str] | None = None,
    problems: dict[str, list[str]] | None = None,
    preset: dict[str, Any] | None = None,
    given_by: str = "the command line",
) -> Config:
    """Ask every question, re-asking until each answer validates.

    *detect* guesses this machine's address towards a broker host
    (default :func:`oneos.runtime.host.guess_address`); *problems* maps a
    setting (``listen.ssh`` for a listener) to why its value in the file was
    invalid, said again just before that setting is asked.  *preset* holds
    settings already given (``oneosd``'s flags): they are taken as the
    answers and not asked.
    """
    problems = dict(problems or {})
    preset = dict(preset or {})
    config = apply_preset(config, preset, problems, say)
    for field, question, show in QUESTIONS:
        if field in preset:
            config = with_changes(config, **{field: preset.pop(field)})
            say(f"{question}: {show(config)} (given on {given_by})")
            problems.pop(field, None)
            continue
        config = ask_setting(config, field, question, show(config), ask, say, problems.pop(field, []))
    if "address" in preset:
        config = with_changes(config, address=preset.pop("address"))
        say(
            f"Address other machines reach this one on: {config.address or '(detected at each start)'} (given on the command line)"
        )
        problems.pop("address", None)
    else:
        config = ask_address(config, ask, say, detect, problems.pop("address", []))
    config = ask_devices(config, ask, say, problems.pop("devices", []))
    for field, why in problems.items():  # repair only: settings without a question of their own
        if field.startswith("listen."):
            name = field.split(".", 1)[1]
            question = f"Endpoint for the {name} listener (auto, '-' = off, or e.g. tcp:2222:interface=ADDR)"
            config = ask_setting(config, field, question, config.listen.get(name, ""), ask, say, why)
        elif field in REPAIR_QUESTIONS:
            config = ask_setting(config, field, REPAIR_QUESTIONS[field], str(getattr(config, field)), ask, say, why)
    return config


def apply_preset(config: Config, preset: dict[str, Any], problems: dict[str, list[str]], say: Say) -> Config:
    """Apply (and take out of *preset*) the given settings that have no question of their own."""
    asked = {field for field, _, _ in QUESTIONS} | {"address"}
    changes = {k: preset.pop(k) for k in list(preset) if k not in asked}
    if not changes:
        return config
    listeners = changes.pop("listen", None) or {}
    given = {**changes, **{f"listen.{k}": v for k, v in listeners.items()}}
    for key in given:
        problems.pop(key, None)
    say("Given on the command line: " + ", ".join(f"{k}={v!r}" for k, v in given.items()))
    if listeners:
        changes["listen"] = {**config.listen, **listeners}
    return with_changes(config, **changes)


def ask_setting(
    config: Config, field: str, question: str, current: str, ask: Ask, say: Say, why: Sequence[str] = ()
) -> Config:
    """Ask one setting until the answer validates; Enter keeps *current*, '-' means blank."""
    for problem in why:
        say(f"  (the value in config.json was invalid: {problem})")
    if current and field in CLEARABLE:
        question += " ('-' = blank)"
    while True:
        answer = ask(f"{question} [{current}]: ").strip()
        value: Any = "" if answer == "-" else answer or current
        try:
            if field.startswith("listen."):
                return with_changes(config, listen={**config.listen, field.split(".", 1)[1]: value})
            return with_changes(config, **{field: value})
        except ConfigError as e:
            say(f"  {e.problem}; try again")


def default_address(config: Config, detected: str) -> str:
    """The address question's default: the configured one, else the detected one
    when the broker is on another machine (blank, i.e. detect at each start,
    for a one-machine network, where only loopback would be found)."""
    if config.address:
        return config.address
    if is_loopback(parse_broker_url(config.pubsub).host) or is_loopback(detected):
        return ""
    return detected


def ask_address(
    config: Config, ask: Ask, say: Say, detect: Callable[[str], str] | None, why: Sequence[str] = ()
) -> Config:
    if detect is None:
        from oneos.runtime.host import guess_address

        detect = guess_address
    detected = detect(parse_broker_url(config.pubsub).host)
    default = default_address(config, detected)
    blank = "'-'" if default else "blank"
    question = f"Address other machines reach this one on (detected now: {detected}; {blank} = detect it at each start)"
    return ask_setting(config, "address", question, default, ask, say, why)


def ask_yes_no(question: str, default: bool, ask: Ask, say: Say) -> bool:
    while True:
        answer = ask(f"{question} (yes/no) [{'yes' if default else 'no'}]: ").strip().lower()
        if not answer:
            return default
        if answer in ("y", "yes"):
            return True
        if answer in ("n", "no"):
            return False
        say(f"  expected yes or no, got {answer!r}; try again")


def ask_devices(config: Config, ask: Ask, say: Say, why: Sequence[str] = ()) -> Config:
    """Whether to expose I/O devices, then the devices one per line until a blank one."""
    for problem in why:
        say(f"  (a device in config.json was invalid: {problem})")
    current = config.devices
    if current:
        say("Devices exposed now: " + ", ".join(d.spec for d in current))
    if not ask_yes_no("Expose I/O devices of this machine (camera, GPIO, a command...)?", bool(current), ask, say):
        return with_changes(config, devices=[])
    say(f"  one per line as {DEVICE_SPEC_FORM}, drivers: {', '.join(DEVICE_DRIVERS)}")
    say("  e.g. camera:in:video:path=/dev/video0  or  led:out:gpio:pin=17")
    say("  a blank line ends the list" + (f"; a blank first line keeps the {len(current)} above" if current else ""))
    devices: list[Any] = []
    while True:
        line = ask(f"devices[{len(devices)}]: ").strip()
        if not line:
            break
        try:
            device = parse_device_spec(line, len(devices))
            check_known_drivers(validate_devices([*devices, device]))  # a name used twice, a driver we lack
        except ConfigError as e:
            say(f"  {e.field}: {e.problem}; try again")
            continue
        devices.append(device)
    if not devices and current:
        devices = list(current)
    if not devices:
        say("  no devices given; none exposed")
    return with_changes(config, devices=devices)


def defaults(home: Path) -> Config:
    """Every setting at its default (a random id), for a config file in *home*."""
    return with_changes(Config(home=home, id="default"), id="")


def setting_of(field: str) -> str:
    """The question a ConfigError field belongs to: ``memory_mb``, ``listen.ssh``, ``devices[1].driver`` -> ``devices``."""
    if field.startswith("listen."):
        return field
    return re.split(r"[.\[]", field, maxsplit=1)[0]


def repair(raw: dict[str, Any], home: Path) -> tuple[Config, list[tuple[str, str]]]:
    """The valid part of *raw* as a Config, and (field, problem) for each value left out.

    An invalid listener or device is left out alone, the others kept; device
    fields are named by their index in the file.
    """
    raw = copy.deepcopy(raw)
    base = defaults(home)
    problems: list[tuple[str, str]] = []
    original_index = list(range(len(raw["devices"]))) if isinstance(raw.get("devices"), list) else []
    while True:
        try:
            config = with_changes(base, **raw)
            check_known_drivers(config.devices)  # kept by a runtime (marked failed), but here: ask again
            return config, problems
        except ConfigError as e:
            field = e.field
            device = re.match(r"devices\[(\d+)\]", field)
            listener = field.split(".", 1)[1] if field.startswith("listen.") else None
            if device and isinstance(raw.get("devices"), list) and int(device[1]) < len(raw["devices"]):
                index = int(device[1])
                del raw["devices"][index]
                field = f"devices[{original_index.pop(index)}]" + field[device.end() :]
            elif listener is not None and isinstance(raw.get("listen"), dict) and listener in raw["listen"]:
                del raw["listen"][listener]
            elif setting_of(field) in raw:
                del raw[setting_of(field)]
            else:
                raise
            problems.append((field, e.problem))


def starting_point(home: Path, ask: Ask, say: Say) -> tuple[Config | None, dict[str, list[str]], bool]:
    """The config the questions start from, problems to ask again, and whether
    the file is broken JSON (to back up before it is replaced); None if the
    user would rather fix a broken file by hand."""
    path = home / CONFIG_FILE
    try:
        raw = read_config_file(home)
    except ConfigError as e:
        try:
            path.read_bytes()
        except OSError:
            raise e from None
        say(e.problem)
        backup = path.name + BROKEN_SUFFIX
        if not ask_yes_no(f"Start from the defaults? (the broken file is kept as {backup})", True, ask, say):
            return None, {}, True
        return defaults(home), {}, True
    if raw is None:
        return defaults(home), {}, False
    config, found = repair(raw, home)
    problems: dict[str, list[str]] = {}
    if found:
        say(f"{path} has invalid settings; the valid ones are kept as the answers in [brackets]:")
        for field, problem in found:
            say(f"  {ConfigError(field, problem)}")
            setting = setting_of(field)
            problems.setdefault(setting, []).append(problem if field == setting else f"{field}: {problem}")
    return config, problems, False


def run(
    argv: list[str],
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
    detect: Callable[[str], str] | None = None,
    preset: dict[str, Any] | None = None,
) -> int:
    """``oneos configure``; *preset*: settings already given (``oneosd``'s flags),
    taken as answers; an invalid one raises :class:`ConfigError` before any question."""
    parser = argparse.ArgumentParser(prog="oneos configure", description=SUMMARY)
    parser.add_argument("--home", type=Path, help="OneOS home (default $ONEOS_HOME or ~/.oneos)")
    args = parser.parse_args(argv)
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    home = args.home or oneos_home()
    path = home / CONFIG_FILE
    preset = {k: v for k, v in (preset or {}).items() if v is not None}
    if preset:
        with_changes(defaults(home), **preset)  # a bad flag is refused before any question
    interactive = _isatty(stdin)
    answered = 0
    ended = False

    def say(text: str) -> None:
        stdout.write(text + "\n")

    def ask(prompt: str) -> str:
        nonlocal answered, ended
        stdout.write(prompt)
        stdout.flush()
        line = "" if ended else stdin.readline()
        if not line:
            if not ended and (interactive or not answered):
                raise EOFError
            if not ended:
                say("\n(end of input: the remaining settings keep the answers in [brackets])")
                ended = True
            else:
                say("")
            return ""
        answered += 1
        return line

    try:
        say(INTRO)
        config, problems, broken = starting_point(home, ask, say)
        if config is None:
            say(f"nothing written; fix {path} by hand or answer yes to start over")
            return 1
        joined, bundle = None, None
        given_by = "the command line"
        if interactive and "pubsub" not in preset and credentials.load(home) is None:
            joined, bundle = ask_join(ask, say)
            if joined is not None:
                preset["pubsub"] = joined.broker
                if credentials.role(joined.username) == "runtime":
                    preset["id"] = joined.username  # the runtime's id is its identity
                given_by = "the command line or the join token"
        config = interview(config, ask, say, detect=detect, problems=problems, preset=preset, given_by=given_by)
    except (EOFError, KeyboardInterrupt):
        say("\nno answers; nothing written")
        return 1
    if broken and path.exists():
        backup = path.with_name(path.name + BROKEN_SUFFIX)
        shutil.copyfile(path, backup)
        say(f"kept the broken file as {backup}")
    path = save_config(config)
    say(f"wrote {path}")
    if joined is not None:
        if bundle is not None:
            from oneos.security import tls

            tls.install(home, bundle)
            say(f"wrote the network's TLS certificates in {tls.tls_dir(home)}")
        say(f"wrote {credentials.save(home, joined)}: this machine joins as {joined.username}")
    return 0


def ask_join(ask: Ask, say: Say) -> tuple[Any, dict[str, Any] | None]:
    """On a machine with no credentials: (credentials, TLS bundle) from an 'oneos invite' token, or (None, None)."""
    while True:
        answer = ask(
            "Join token from 'oneos invite' on the network's first machine "
            "(blank: none; this machine then starts its own network or you name a broker next): "
        ).strip()
        if not answer:
            return None, None
        try:
            return credentials.read_token(answer)
        except credentials.CredentialsError as e:
            say(f"  {e}")


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
