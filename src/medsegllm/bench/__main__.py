"""Entry point for `python -m medsegllm.bench`."""

from medsegllm.bench.run import main

if __name__ == "__main__":
    main()
