"""A tiny inventory package (sample workspace for kvblend's demo)."""
