"""Configuration, placement, weight sync, the training loop and the entry points (Ray lives here)."""
