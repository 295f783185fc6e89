"""Measuring prompts: metrics, answer extraction, significance tests, objectives, attribution, the final report's pick
(final_pick) and per-input selector (selector)."""
