"""Pipelines: stage order, manifest, skip-if-done."""
