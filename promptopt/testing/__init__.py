"""Test kits users subclass (StrategyContract, BackendContract) and helpers; the test servers
(fake OpenAI-compatible server, fault proxy, vLLM server helper) are submodules imported by name."""
from promptopt.testing.contracts import (BAD_PROMPT, HARMFUL, TINY_LM_WORDS, BackendContract, HarmfulSentenceBackend,
                                         StrategyContract, check_every_budget, events_of, fake_optimizer, make_run,
                                         save_tiny_causal_lm, toy_task)

__all__ = ["BAD_PROMPT", "HARMFUL", "TINY_LM_WORDS", "BackendContract", "HarmfulSentenceBackend", "StrategyContract",
           "check_every_budget", "events_of", "fake_optimizer", "make_run", "save_tiny_causal_lm", "toy_task"]
