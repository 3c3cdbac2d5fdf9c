"""The offline demo world: tiny models and tokenizers built locally, the review grammar, the NLI summary world."""
