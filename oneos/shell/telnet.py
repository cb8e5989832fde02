"""The shell's telnet front end (``listen.telnet``, off by default).

A user logs in with a user name and password through the front door's
Portal (:class:`TelnetLogin`), then works line by line (:class:`TelnetShell`):
the telnet client does the line editing, the shell reads its lines
(:class:`~oneos.shell.lines.TelnetLines`).  Telnet is plain text, passwords
included: keep it on a loopback or otherwise trusted endpoint.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from twisted.conch.telnet import (
    BRK,
    ECHO,
    IP,
    LINEMODE_EOF,
    AuthenticatingTelnetProtocol,
    ITelnetProtocol,
    OptionRefused,
    TelnetProtocol,
    TelnetTransport,
)
from twisted.cred import credentials
from twisted.internet import protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from oneos.shell.frontend import (
    BANNER,
    CONTINUATION_PROMPT,
    LoginGrace,
    SafeWriter,
    cut_later,
    peer_address,
    to_program,
)
from oneos.shell.lines import CTRL_D, EndOfInput, Interrupt, TelnetLines, TooLong
from oneos.shell.parser import MAX_LINE, is_incomplete
from oneos.shell.session import SessionInput
from oneos.shell.throttle import LOGIN_GRACE

if TYPE_CHECKING:
    from oneos.shell.service import ShellService

log = Logger()


def _telnet(proto: protocol.Protocol) -> TelnetTransport:
    """*proto*'s transport, there from ``makeConnection`` on.

    Twisted types ``Protocol.transport`` as ``ITransport | None``; the login
    and the shell both run on conch's TelnetTransport (``will``, ``wont``,
    ``getOptionState``), which connects the shell to itself on a login.
    """
    assert proto.transport is not None, "not connected yet"
    return cast(TelnetTransport, proto.transport)  # Twisted's typing: ITransport, too general here


class TelnetLogin(AuthenticatingTelnetProtocol):
    """conch's telnet login, made to work with any client.

    conch waits for the client's answer to ``WILL ECHO`` (sent to hide the
    password) before it answers ``WONT ECHO`` and logs in; a client that
    never answers option negotiation (``nc``, a raw socket) left the first
    negotiation pending, the second failed with AlreadyNegotiating and the
    login never happened.  A client refusing with DONT ECHO failed the same
    way (AlreadyDisabled).  Here echo is given back only if the client took
    it, negotiation failures are ignored, and the login goes ahead without
    waiting.  Lines typed before the login ends are kept for the shell.
    """

    def __init__(self, portal: Any, login_grace: float | None = LOGIN_GRACE, clock: Any = None) -> None:
        super().__init__(portal)
        self.early: list[bytes] = []
        self.login_grace = login_grace
        self.clock = clock
        self.grace: LoginGrace | None = None

    def connectionMade(self) -> None:
        clock = self.clock
        if clock is None:
            from twisted.internet import reactor as clock
        self.grace = LoginGrace(clock, self.login_grace, self._grace_expired)
        super().connectionMade()

    def _grace_expired(self) -> None:
        tcp = getattr(self.transport, "transport", None)
        log.info(
            "telnet: closing the connection from {peer}: not logged in within {t:g}s",
            peer=peer_address(tcp),
            t=self.login_grace,
        )
        _telnet(self).write(b"\nLogin timed out\n")
        _telnet(self).loseConnection()
        if self.grace is not None:
            cut_later(self.grace.clock, tcp)

    def connectionLost(self, reason: Any = None) -> None:
        if self.grace is not None:
            self.grace.stop()
        super().connectionLost(reason)

    def telnet_User(self, line: bytes) -> str:
        self.username = line.strip()
        _telnet(self).will(ECHO).addErrback(lambda f: None)
        _telnet(self).write(b"Password: ")
        return "Password"

    def telnet_Password(self, line: bytes) -> None:
        username, password = self.username, line.rstrip(b"\r")
        del self.username
        echo = _telnet(self).getOptionState(ECHO).us
        if echo.negotiating:  # the client never answered WILL ECHO: stop waiting, we do not echo
            pending, echo.onResult = echo.onResult, None
            echo.negotiating, echo.state = False, "no"
            if pending is not None:
                pending.errback(Failure(OptionRefused(ECHO)))
        elif echo.state == "yes":  # it let us echo (hiding the password): give echo back
            _telnet(self).wont(ECHO).addErrback(lambda f: None)
        _telnet(self).write(b"\n")
        self.state = "Discard"  # before logging in: a successful login (maybe at once) moves on to "Command"
        d = self.portal.login(credentials.UsernamePassword(username, password), None, ITelnetProtocol)
        d.addCallbacks(self._cbLogin, self._ebLogin)

    def telnet_Discard(self, line: bytes) -> None:
        self.early.append(line)

    def _cbLogin(self, ial: Any) -> None:
        if self.grace is not None:
            self.grace.stop()
        super()._cbLogin(ial)
        early, self.early = self.early, []
        rest = self.clearLineBuffer()
        if early or rest:
            shell: ITelnetProtocol = ial[1]  # the avatar super()._cbLogin made self.protocol
            shell.dataReceived(b"".join(line + b"\n" for line in early) + rest)

    def _ebLogin(self, failure: Failure) -> None:
        self.early = []
        _telnet(self).write(b"\nLogin refused\n")
        _telnet(self).write(b"Username: ")
        self.state = "User"


class TelnetShell(TelnetProtocol):
    """A logged-in telnet user: lines in, output out (the telnet client edits the line).

    While a command runs, what the user types is the program's input (the
    session's SessionInput); Ctrl-D (a raw 0x04, or telnet's EOF command)
    ends it; Ctrl-C (0x03 or telnet's IP command) interrupts.  Between
    commands, complete lines are run in order; Ctrl-D on an empty line
    logs out.  What the bytes mean is :class:`~oneos.shell.lines.TelnetLines`'s.
    """

    def __init__(self, user: str, shell: ShellService) -> None:
        self.user = user
        self.shell = shell
        self.lines = TelnetLines()
        #: a command runs: what arrives is its input
        self.running = False
        #: the first prompt was shown (lines typed before it wait in self.lines)
        self.started = False
        #: the lines so far of a construct still open (an ``if`` without its ``fi``, an open quote)
        self.continued: list[str] = []

    def connectionMade(self) -> None:
        out = SafeWriter(_telnet(self).write)  # TelnetTransport turns \n into \r\n itself
        self.interp = self.shell.new_interpreter(self.user, out, out)
        self.interp.interactive = True  # background jobs are announced (as bash does at a terminal)
        self.interp.input = SessionInput()
        out.write(BANNER.encode())
        self.shell.prepare(self.interp).addBoth(lambda _: self._prompt())

    def _prompt(self) -> None:
        self.running, self.started = False, True
        assert self.interp.input is not None  # set in connectionMade
        self.interp.input.discard()
        _telnet(self).write(self.interp.session.prompt().encode("utf-8", "replace"))
        self._drain()

    def unhandledCommand(self, command: bytes, argument: Any) -> None:
        if command in (IP, BRK):
            # The client (which echoed ^C itself) follows IP with DO TIMING-MARK and drops our
            # output until the answer, written right after this: so answer on the next turn.
            self.shell.reactor.callLater(0, self._interrupt_process)
        elif command == LINEMODE_EOF:  # IAC EOF (236)
            self.dataReceived(CTRL_D)

    def _interrupt_process(self) -> None:
        """Telnet's IP (or BRK) command: as Ctrl-C."""
        if not self.running:
            self.lines.discard()  # at the prompt: drop the line being typed
        self._interrupt(b"\n")

    def _interrupt(self, echo: bytes) -> None:
        _telnet(self).write(echo)
        if self.running:
            self.interp.interrupt()
        else:
            self.continued = []  # Ctrl-C drops an unfinished construct too, as bash does
            _telnet(self).write(self.interp.session.prompt().encode("utf-8", "replace"))

    def dataReceived(self, data: bytes) -> None:
        running = self.running
        for event in self.lines.feed(data, running):
            if isinstance(event, Interrupt):
                self._interrupt(b"^C\n")
            elif isinstance(event, EndOfInput) and not running and self.continued:
                # Ctrl-D inside an unfinished construct: the parser says what was missing, as bash does
                self._run(self.continued)
            elif isinstance(event, EndOfInput) and not running:  # Ctrl-D on an empty line logs out
                _telnet(self).loseConnection()
                return
            elif isinstance(event, TooLong):
                self.interp.error(f"oneos: line too long (the limit is {MAX_LINE} characters)")
            else:
                assert self.interp.input is not None
                to_program(event, self.interp.input)
        self._drain()

    def _drain(self) -> None:
        while not self.running and self.started:
            line = self.lines.next_line()
            if line is None:
                return
            typed = line.decode("utf-8", "replace")
            if is_incomplete("\n".join([*self.continued, typed])):
                # an open if/for/quote/pipe: ask for the rest (bash's PS2) and run it all once complete
                self.continued.append(typed)
                _telnet(self).write(CONTINUATION_PROMPT.encode())
                continue
            self._run([*self.continued, typed])

    def _run(self, lines: list[str]) -> None:
        """Run *lines* as one input (a construct typed over several is in the history line by line)."""
        self.running, self.continued = True, []
        for typed in lines if len(lines) > 1 else []:
            self.interp.session.remember(typed)
        self.interp.execute("\n".join(lines), record=len(lines) == 1).addBoth(self._done)

    def _done(self, _: Any) -> None:
        if self.interp.exit_status is not None:
            _telnet(self).loseConnection()
            return
        self._prompt()

    def connectionLost(self, reason: Any = None) -> None:
        self.interp.hangup()
        self.shell.forget(self.interp)


def telnet_factory(portal: Any, login_grace: float | None, clock: Any) -> protocol.ServerFactory:
    """The telnet server factory of a front door: logins through *portal* within *login_grace* seconds."""
    f = protocol.ServerFactory()
    f.protocol = lambda: TelnetTransport(TelnetLogin, portal, login_grace, clock)  # type: ignore[assignment]
    return f
