"""Example scripts for peft-mft (importable as ``examples.*`` from the repository root)."""
