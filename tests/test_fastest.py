"""`fastest` names the candidate that takes least time, whatever the order they are given in."""

import time

from polaragg.fastest import fastest


def test_the_quick_candidate_wins_in_either_order():
    calls = {"slow": 0, "quick": 0}

    def slow():
        calls["slow"] += 1
        time.sleep(0.02)

    def quick():
        calls["quick"] += 1

    assert fastest({"slow": slow, "quick": quick}) == "quick"
    assert fastest({"quick": quick, "slow": slow}, repeats=2) == "quick"
    assert calls == {"slow": 5, "quick": 5}  # each candidate ran `repeats` times per call
