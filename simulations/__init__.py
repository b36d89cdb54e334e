"""Failure scenarios run on the deterministic simulator: ``python -m simulations --help``."""
