"""The test cases of a hypothesis state machine: the default run's, and a twin over far
more and longer sequences that runs only under ``--soak`` (within an hour)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis.stateful import RuleBasedStateMachine

#: Every phase but explain: its line tracing makes a failing run take minutes (Python 3.11).
NO_EXPLAIN = (Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink)

SOAK_EXAMPLES = 20000
SOAK_TIMEOUT_S = 3600


def machine_tests(machine: type[RuleBasedStateMachine], *, examples: int, steps: int, soak_steps: int,
                  phases: Sequence[Phase] | None = None) -> tuple[type, type]:
    """``(default, soak)`` test cases of ``machine``; assign each to a module-level
    ``Test...`` name for pytest to collect."""
    common = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow]}
    if phases is not None:
        common["phases"] = phases
    default = machine.TestCase
    default.settings = settings(max_examples=examples, stateful_step_count=steps, **common)
    twin = type(f"{machine.__name__}Soak", (machine,),
                {"__doc__": "The same over far more and longer sequences (opt-in: --soak).",
                 "__module__": machine.__module__})
    soak = pytest.mark.timeout(SOAK_TIMEOUT_S)(pytest.mark.soak(twin.TestCase))
    soak.settings = settings(max_examples=SOAK_EXAMPLES, stateful_step_count=soak_steps, **common)
    return default, soak
