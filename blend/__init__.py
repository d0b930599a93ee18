"""The model engine: Llama-family forward with explicit KV, checkpoint loading, sampling, generation."""
