"""Benchmarks: each module prints ratios measured side by side in one run.

Run from the repository root as modules (``python -m bench.e2e``), so they can
share the tests' helpers for isolated settings; ``./dev.sh bench`` runs them all.
"""
