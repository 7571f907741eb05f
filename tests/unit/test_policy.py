"""The replace-or-drop decision for a server that failed while building."""
import pytest

from cloudcompute.provision.policy import Decision, FailurePolicy, on_failure


@pytest.mark.parametrize("max_repl,needed,used,remaining,expected", [
    (2, 3, 0, 2, Decision.REPLACE),   # replacements left: replace, whatever remains
    (2, 3, 1, 0, Decision.REPLACE),
    (2, 3, 2, 2, Decision.FAIL),      # none left, too few remain (all-or-nothing)
    (2, 2, 2, 2, Decision.DROP),      # none left, min_nodes still met
    (0, 1, 0, 1, Decision.DROP),      # replacements off: drop while min_nodes holds
    (0, 1, 0, 0, Decision.FAIL),      # ...and fail when it would not
    (0, 3, 0, 3, Decision.DROP),      # exactly min_nodes left is enough
])
def test_every_branch(max_repl, needed, used, remaining, expected):
    assert on_failure(FailurePolicy(max_repl, needed), used, remaining) is expected
