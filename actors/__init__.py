"""Sampling workers: vLLM engines (and an HF-transformers fallback) for the policy and the anchor."""
