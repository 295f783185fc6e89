"""promptopt: discrete prompt optimization with an LLM as optimizer."""
from promptopt.errors import PromptOptError
from promptopt.types import Candidate, Evaluation, Example, ExampleResult, Usage

__all__ = ["Candidate", "Evaluation", "Example", "ExampleResult", "PromptOptError", "Usage"]
__version__ = "0.1.0"
