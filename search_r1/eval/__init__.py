"""Evaluation harness: ``python -m search_r1.eval`` (run, compare); see docs/evaluation.md."""
