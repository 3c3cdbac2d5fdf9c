"""The DeepSpeed learner: J-BOND update, EMA anchor, weight export, checkpoints."""
