"""What a user's own harness drives: a program of named prompts scored by the user's evaluator (program), and the ask/tell Study."""
