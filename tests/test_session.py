"""A visitor's session control: one turn at a time, Stop before and during a turn, Clear's epoch."""

from __future__ import annotations

import copy

import pytest

from greedyscore.errors import BadInput
from greedyscore.session import Session


def test_a_second_turn_is_refused_while_one_runs_and_allowed_after():
    s = Session()
    with s.turn():
        with pytest.raises(BadInput, match="still being generated"):
            with s.turn():
                pass
    with s.turn() as cancel:
        assert not cancel.is_set()


def test_stop_reaches_an_armed_turn_before_it_starts():
    s = Session()
    s.arm()
    s.stop()
    with s.turn() as cancel:
        assert cancel.is_set()
    with s.turn() as cancel:  # the next turn starts fresh
        assert not cancel.is_set()


def test_clear_stops_the_running_turn_and_moves_the_epoch():
    s = Session()
    with s.turn() as cancel:
        epoch = s.epoch
        s.clear()
        assert cancel.is_set() and s.epoch == epoch + 1


def test_each_visitor_gets_a_fresh_session_from_the_state_template():
    template = Session()
    with template.turn():
        other = copy.deepcopy(template)
        assert other is not template and not other.lock.locked() and other.cancel is None
