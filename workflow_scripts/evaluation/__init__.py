"""Evaluation: per-case metrics, the evaluation job, settings, bootstrap, mixed models, statistics, agreement."""
