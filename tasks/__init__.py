"""Stages of anomflow: pure compute functions, model adapters, datasets, metrics and reports."""
