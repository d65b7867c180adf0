"""Some rows of the paper's table, retrained on an existing run's data: `python -m medsegllm.bench.rows`.

For a method change between two full `make bench` runs: the same pseudolabel stage, train and
validate as the table (bench/demo.py), on chosen rows and seeds, printed per seed with the means.
It writes no BENCHMARKS.md: a figure from here is quoted with this command beside it.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from medsegllm.bench.demo import ROWS, plan, train_rows

SHOWN = ("dice", "dice_holdout", "dice_liver", "dice_kidney", "dice_lesion", "lesions_fp", "js_features", "js_travel",
         "js_travel_retest")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m medsegllm.bench.rows", description=__doc__.splitlines()[0])
    parser.add_argument("--rows", nargs="+", required=True, choices=[r["key"] for r in ROWS], help="table rows to run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--data-dir", type=Path, default=Path("data"), help="outputs of `make run` (ingested, findings, cohort)")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--out-json", type=Path, default=None, help="also write every run's values here")
    return parser.parse_args(argv)


def render(runs: dict[str, list[dict]]) -> str:
    """Markdown: one line per row and seed, then the row's mean."""
    lines = ["| row | seed | " + " | ".join(SHOWN) + " |", "|---|---|" + "---|" * len(SHOWN)]
    for key, row_runs in runs.items():
        for run in row_runs:
            lines.append(f"| {key} | {run['seed']} | " + " | ".join(_cell(run["values"].get(c)) for c in SHOWN) + " |")
        if len(row_runs) > 1:
            means = [np.mean([r["values"][c] for r in row_runs if r["values"].get(c) is not None] or [np.nan]) for c in SHOWN]
            lines.append(f"| {key} | mean | " + " | ".join(_cell(m) for m in means) + " |")
    return "\n".join(lines)


def _cell(value: float | None) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{value:.3f}"


def main(argv: list[str] | None = None) -> None:
    from medsegllm.common.deid import resolve_salt
    from medsegllm.config import load_params

    args = parse_args(argv)
    params = load_params(args.params)
    with tempfile.TemporaryDirectory(prefix="medsegllm-rows-") as work:
        runs, _, _ = train_rows(args.data_dir, params, resolve_salt(params.ingest), Path(work), plan(args.seeds, 0, args.rows))
    runs = {key: row_runs for key, row_runs in runs.items() if row_runs}
    if args.out_json:
        args.out_json.write_text(json.dumps({k: [{"seed": r["seed"], **r["values"]} for r in v] for k, v in runs.items()}, indent=1))
    print(render(runs))


if __name__ == "__main__":
    sys.exit(main())
