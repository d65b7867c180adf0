"""LLM description backends: grounded findings in, one guarded sentence per lesion out."""
