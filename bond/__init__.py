"""bond: the pure J-BOND algorithm (Best-of-N distillation, Jeffreys divergence, EMA anchor). Imports torch only."""
