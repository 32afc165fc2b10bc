"""A visitor's session control: Clear's epoch and a fresh session per visitor (one turn at a time and
Stop before a turn are tested with the model in test_conversation.py)."""

from __future__ import annotations

import copy

from greedyscore.session import Session


def test_clear_stops_the_running_turn_and_moves_the_epoch():
    s = Session()
    with s.turn() as cancel:
        epoch = s.epoch
        s.clear()
        assert cancel.is_set() and s.epoch == epoch + 1


def test_each_visitor_gets_a_fresh_session_from_the_state_template():
    """gr.State deep-copies its initial value per visitor, and its config copies the fields."""
    from dataclasses import asdict

    from greedyscore.ui import ChatSession

    for template in (Session(), ChatSession()):
        asdict(template)
        other = copy.deepcopy(template)
        with other.turn():
            assert template.lock is None and not copy.deepcopy(template).cancel
