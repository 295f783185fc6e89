"""`promptopt sweep`: a grid of tasks x strategies x seeds, each cell an ordinary `promptopt optimize` run in
its own run dir; a rerun skips finished cells and resumes cut-off ones; local processes or Ray place the cells."""
