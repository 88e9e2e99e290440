"""The LLM runtime: requests in, continuous batching over a paged, prefix-cached KV pool, outputs
out."""
