"""Building blocks several strategies share (selection, population, phrase edits, EvoPrompt operators,
RL policy, reply parsing). Not plugins: nothing here registers a strategy."""
