"""transformers generate(): the correctness oracle and the baseline backend."""
