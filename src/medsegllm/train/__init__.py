"""Training: slice sampling from the ingest/findings/pseudo-label artifacts and the training loop."""
