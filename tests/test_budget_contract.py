"""The every-budget contract for every registered strategy at its default settings (the contract test
classes run it again at theirs): no crash, no overspending, a final report, from a budget of 1 up."""
from typing import Any

import pytest

from promptopt import registry
from promptopt.budget import Budget
from promptopt.config import strategy_config
from promptopt.testing import check_every_budget, toy_task

# RLPrompt needs its policy, a local model: the tiny one, small enough to run in seconds.
NEEDED = {"rlprompt": lambda tiny: {"policy_model": str(tiny), "prompt_length": 3, "adapter_hidden": 32,
                                    "prompts_per_step": 4, "examples_per_reward": 4}}


@pytest.mark.parametrize("name", registry.names("strategies"))
def test_every_registered_strategy_fits_every_budget(name: str, request: pytest.FixtureRequest) -> None:
    cls = registry.get("strategies", name)
    options: dict[str, Any] = NEEDED[name](request.getfixturevalue("tiny_lm_dir")) if name in NEEDED else {}
    checked = check_every_budget(lambda: cls(strategy_config(cls, options)), toy_task(), Budget(max_examples=300))
    assert checked >= 10 or name == "seed"  # the seed strategy spends no examples: no budget to cut
