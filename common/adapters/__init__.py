"""Adapters shared by several components: rate limits and locks in memory or on Redis."""
