"""Per-source and global limits on unauthenticated connections and failed logins (pure, on a Clock)."""

from twisted.internet.task import Clock

from oneos.shell.throttle import LoginThrottle


def test_too_many_unauthenticated_connections_are_closed():
    t = LoginThrottle(Clock(), total=5, per_source=2)
    assert t.opened("10.0.0.1") and t.opened("10.0.0.1")
    assert not t.opened("10.0.0.1"), "a third pending connection from one address is refused"
    assert t.opened("10.0.0.2") and t.opened("10.0.0.3") and t.opened("10.0.0.4")
    assert not t.opened("10.0.0.5"), "and the total is capped"
    t.settled("10.0.0.1")
    assert t.opened("10.0.0.5")


def test_failures_from_one_address_wait_longer_and_longer_until_a_success():
    clock = Clock()
    t = LoginThrottle(clock, base=0.5, cap=8)
    delays = [t.failed("10.0.0.1") for _ in range(7)]
    assert delays == [0.5, 1, 2, 4, 8, 8, 8]
    assert t.failed("10.0.0.2") == 0.5, "other addresses are not punished"
    t.succeeded("10.0.0.1")
    assert t.failed("10.0.0.1") == 0.5


def test_a_quiet_address_is_forgotten():
    clock = Clock()
    t = LoginThrottle(clock, forget_after=60)
    for _ in range(5):
        t.failed("10.0.0.1")
    clock.advance(61)
    assert t.failed("10.0.0.1") == t.base


def test_guessing_in_parallel_is_bounded():
    # 50 parallel connections from one address: at most per_source try at once, each failure waits up to cap
    clock = Clock()
    t = LoginThrottle(clock, per_source=4, cap=8)
    admitted = sum(t.opened("10.9.9.9") for _ in range(50))
    assert admitted == 4
    for _ in range(10):
        t.failed("10.9.9.9")
    # steady state: 4 attempts per 8 s
    assert t.failed("10.9.9.9") == 8
