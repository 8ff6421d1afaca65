"""Load scenarios and their measurements; run from the repository root (``python -m bench.<name>``).

Results and the commands that produced them are in docs/benchmarks.md.
"""
