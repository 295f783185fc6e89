"""Measuring prompts: metrics, answer extraction, significance tests, objectives, attribution."""
