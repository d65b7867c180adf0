"""Speed benchmarks: ingest vs dcm2niix / MONAI LoadImage, training and inference vs a plain MONAI loop.

`python -m medsegllm.bench` (or `make bench`) runs them side by side in one process and writes
BENCHMARKS.md and benchmarks/results.json; nothing runs at import time.
"""
