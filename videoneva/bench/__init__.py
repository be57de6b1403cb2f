"""Benchmarks: load generation against a server, the in-process pipeline or a plain-transformers baseline."""
