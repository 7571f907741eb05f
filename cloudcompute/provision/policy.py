"""What to do with a server that failed while the cluster was being built.

A pure decision, so every branch is testable without a cloud: replace the
server while replacements are left, else drop it while the cluster still
has ``min_nodes`` (all of them by default), else fail the whole ``up()``.
"""
from __future__ import annotations

import dataclasses
import enum


class Decision(enum.Enum):
    REPLACE = "replace"
    DROP = "drop"
    FAIL = "fail"


@dataclasses.dataclass(frozen=True)
class FailurePolicy:
    """``max_replacements`` for the whole cluster; ``needed`` nodes at least."""
    max_replacements: int
    needed: int


def on_failure(policy: FailurePolicy, replacements_used: int, remaining: int) -> Decision:
    """The fate of one failed server. ``remaining``: the nodes still wanted
    without it (built or building)."""
    if replacements_used < policy.max_replacements:
        return Decision.REPLACE
    if remaining >= policy.needed:
        return Decision.DROP
    return Decision.FAIL
