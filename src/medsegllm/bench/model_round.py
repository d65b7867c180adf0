"""`python -m medsegllm.bench.model_round`: one round of `make bench`'s training and inference sections
(`bench.model.bench_models`) in this interpreter, written as JSON.

`python -m medsegllm.bench --model-rounds 3` runs each round through this command, so that no round
inherits compiled kernels, warm caches or allocator state from another: each compiles from nothing,
as a first `train --compile` or `segment --compile` on a machine does.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from medsegllm.bench.model import bench_cohort, bench_models
from medsegllm.common.io import write_json


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m medsegllm.bench.model_round", description=__doc__.splitlines()[0])
    parser.add_argument("--device", required=True)
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--train-steps", type=int, required=True)
    parser.add_argument("--reps", type=int, required=True)
    parser.add_argument("--train-series", type=int, required=True)
    parser.add_argument("--train-shape", type=int, nargs=3, required=True)
    parser.add_argument("--infer-shape", type=int, nargs=3, required=True)
    parser.add_argument("--infer-reps", type=int, required=True)
    parser.add_argument("--channels", type=int, nargs="+", required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    result = bench_models(bench_cohort(args.train_series, tuple(args.train_shape)), args.batch_size, args.train_steps,
                          args.reps, tuple(args.infer_shape), args.infer_reps, args.device, args.channels)
    write_json(args.out, result)


if __name__ == "__main__":
    main()
