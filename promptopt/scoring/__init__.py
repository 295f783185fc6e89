"""Scoring: candidates x examples into backend calls (scorer), the routes a choose task takes on a target, and the response cache."""
