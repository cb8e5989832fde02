"""The restart policy (oneos/scheduler/restarts.py), pure: what tests/unit/test_failover_logic.py does not already pin.

That file checks the three modes once, the back-off doubling to its cap
with quarantine after ``max_attempts``, and quarantine after runtime deaths.
These add the edges: ``always`` and a clean exit, unknown modes, the exact
attempt boundary, the window forgetting deaths too, the history never being
changed in place, and how each end becomes an outcome.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from oneos.scheduler.restarts import (
    EXITED_OK,
    FAILED,
    LOST,
    USER_KILL_REASON,
    USER_KILLED,
    RestartPolicy,
    decide,
    outcome_of,
)


@pytest.mark.parametrize("outcome", [EXITED_OK, FAILED, LOST, USER_KILLED])
@pytest.mark.parametrize("mode", ["no", "", "sometimes", "ON-FAILURE"])
def test_no_and_unknown_modes_never_restart_and_keep_no_books(mode, outcome):
    d = decide(RestartPolicy(), mode, outcome, {"attempts": 2, "window_start": 0.0}, now=1.0)
    assert (d.restart, d.history, d.quarantined) == (False, None, "")


@pytest.mark.parametrize("mode", ["on-failure", "always"])
def test_a_users_kill_is_final_in_every_mode(mode):
    assert decide(RestartPolicy(), mode, USER_KILLED, None, 0).history is None


def test_always_restarts_a_clean_exit_after_the_base_delay_however_often():
    p = RestartPolicy(base=2, cap=60, max_attempts=4)
    history, delays = None, []
    for _ in range(4):
        d = decide(p, "always", EXITED_OK, history, now=5.0)
        assert d.restart
        delays.append(d.delay)
        history = d.history
    assert delays == [2, 2, 2, 2], "a clean exit does not grow the back-off"
    assert history["attempts"] == 4
    d = decide(p, "always", EXITED_OK, history, now=5.0)
    assert not d.restart and "ended 5 times in 600s" in d.quarantined, "but it still counts toward the cap"


def test_always_restarts_a_failure_with_the_growing_back_off():
    p = RestartPolicy(base=1, cap=100)
    first = decide(p, "always", FAILED, None, 0)
    second = decide(p, "always", FAILED, first.history, 1)
    assert (first.delay, second.delay) == (1, 2)


def test_exactly_max_attempts_restarts_are_allowed():
    p = RestartPolicy(max_attempts=1)
    first = decide(p, "on-failure", FAILED, None, 0)
    assert first.restart and first.history == {"window_start": 0, "attempts": 1}
    second = decide(p, "on-failure", FAILED, first.history, 1)
    assert not second.restart and second.quarantined == "quarantined: ended 2 times in 600s"
    third = decide(p, "on-failure", FAILED, second.history, 2)
    assert not third.restart and "ended 3 times" in third.quarantined, "a quarantined job stays quarantined"


def test_the_back_off_never_passes_the_cap_however_many_attempts():
    p = RestartPolicy(base=1, cap=300, max_attempts=10_000)
    d = decide(p, "on-failure", FAILED, {"window_start": 0.0, "attempts": 2000}, now=1.0)
    assert d.restart and d.delay == 300


def test_the_window_forgets_deaths_as_well_as_attempts():
    p = RestartPolicy(window=100, max_runtime_deaths=2)
    first = decide(p, "on-failure", LOST, None, now=0)
    assert first.history == {"window_start": 0, "attempts": 1, "runtime_deaths": 1}
    later = decide(p, "on-failure", LOST, first.history, now=100.5)
    assert later.restart and later.history == {"window_start": 100.5, "attempts": 1, "runtime_deaths": 1}
    within = decide(p, "on-failure", LOST, first.history, now=100)
    assert not within.restart and "died with it 2 times in 100s" in within.quarantined


def test_a_failure_counts_as_an_attempt_not_a_death():
    p = RestartPolicy(max_runtime_deaths=2)
    h = decide(p, "on-failure", LOST, None, 0).history
    h = decide(p, "on-failure", FAILED, h, 1).history
    assert h == {"window_start": 0, "attempts": 2, "runtime_deaths": 1}
    assert decide(p, "on-failure", FAILED, h, 2).restart


def test_the_history_passed_in_is_never_changed():
    before = {"window_start": 0.0, "attempts": 3}
    snapshot = dict(before)
    d = decide(RestartPolicy(), "on-failure", LOST, before, now=1.0)
    assert before == snapshot and d.history is not before and d.history["attempts"] == 4


@pytest.mark.parametrize(
    "status,outcome",
    [
        ({"state": "lost"}, LOST),
        ({"state": "exited", "exit_code": 0}, EXITED_OK),
        ({"state": "exited", "exit_code": None}, EXITED_OK),
        ({"state": "exited"}, EXITED_OK),
        ({"state": "exited", "exit_code": 1}, FAILED),
        ({"state": "killed", "reason": USER_KILL_REASON}, USER_KILLED),
        ({"state": "killed", "reason": f"{USER_KILL_REASON} alice"}, USER_KILLED),
        ({"state": "killed", "reason": "over its memory limit (512 MB)"}, FAILED),
        ({"state": "killed", "reason": None, "signal": 9}, FAILED),
        ({"state": "failed", "reason": "cannot start"}, FAILED),
        ({}, FAILED),
    ],
)
def test_how_each_end_is_judged(status, outcome):
    assert outcome_of(status) == outcome


@given(
    base=st.floats(min_value=0.01, max_value=10),
    cap=st.floats(min_value=0.01, max_value=1000),
    n=st.integers(min_value=1, max_value=30),
)
def test_failure_delays_never_shrink_and_never_pass_the_cap(base, cap, n):
    p = RestartPolicy(base=base, cap=cap, max_attempts=n)
    history, delays = None, []
    for i in range(n):
        d = decide(p, "on-failure", FAILED, history, now=float(i))
        assert d.restart
        delays.append(d.delay)
        history = d.history
    assert delays == sorted(delays) and max(delays) <= cap and delays[0] == min(base, cap)
    assert not decide(p, "on-failure", FAILED, history, now=float(n)).restart
