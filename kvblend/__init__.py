"""kvblend: repository-aware code completion that blends precomputed KV caches."""

__version__ = "0.1.0"
