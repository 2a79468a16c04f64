"""Benchmarks and gates: run as modules, e.g. ``python -m benchmarks.model_core --quick``.

Results (JSON + PNG, with the command, machine and date) go to ``benchmarks/results/``.
"""
