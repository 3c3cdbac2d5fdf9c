"""Reward models (learned, NLI entailment, Python function) and their Ray Serve application."""
