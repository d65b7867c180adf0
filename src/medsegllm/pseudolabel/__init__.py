"""Pseudo-labels: a teacher's prediction fused with a knowledge prior derived from the report."""
