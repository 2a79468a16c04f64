"""The engine layer: pre (tokenize) -> batcher -> core (model) -> post, and the registry."""
