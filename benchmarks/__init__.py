"""Benchmarks of peft-mft: run as `python -m benchmarks.<name>` from the repository root."""
