"""One step's packed batch and the attention backends that run it over the paged KV pool."""
