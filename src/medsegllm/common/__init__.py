"""Helpers every stage shares: atomic I/O, pseudonyms, table schemas, splits, logging."""
