"""Reports stage: PHI-scrubbed report text -> grounded structured findings, descriptions, embeddings."""
