"""Evaluation of both stages: the paper-style tables, zero-shot and few-shot studies, real scenario 5, plots."""
