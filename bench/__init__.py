"""Benchmarks and independent checks that live beside the package (not installed with it)."""
