"""Scoring: candidates into jobs (candidates), jobs x examples into backend calls (scorer), the routes a choose task takes on a target, and the response cache."""
