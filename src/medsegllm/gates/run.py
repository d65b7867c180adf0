"""Run a stage's data gate and fail loudly, with a readable table, when the data is wrong."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from medsegllm.common.io import write_json
from medsegllm.gates.suites import SUITES

log = logging.getLogger(__name__)


class DataGateFailed(RuntimeError):
    """A stage's outputs broke an expectation: later stages must not read them."""


def run_check(stage: str, out_dir: Path) -> dict:
    """Validate `out_dir` (a stage's output folder) with the stage's suite; write `data_checks.json`."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    if stage not in SUITES:
        raise ValueError(f"no data gate for stage {stage!r}; known: {', '.join(SUITES)}")
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise DataGateFailed(f"{stage}: output folder {out_dir} does not exist")
    start = time.perf_counter()
    try:
        tables = SUITES[stage](out_dir)
    except (FileNotFoundError, KeyError, ValueError) as exc:
        raise DataGateFailed(f"{stage}: outputs in {out_dir} are incomplete or malformed: {exc}") from exc

    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    source = ctx.data_sources.add_pandas(f"{stage}_outputs")
    checks = []
    for table in tables:
        suite = ctx.suites.add(gx.ExpectationSuite(name=f"{stage}.{table.name}"))
        for expectation in table.expectations:
            suite.add_expectation(expectation)
        batch_def = source.add_dataframe_asset(name=table.name).add_batch_definition_whole_dataframe("all")
        result = batch_def.get_batch(batch_parameters={"dataframe": table.frame}).validate(suite)
        for res in result.results:
            kwargs = {k: v for k, v in res.expectation_config.kwargs.items() if k != "batch_id"}
            checks.append({
                "table": table.name,
                "expectation": res.expectation_config.type,
                "kwargs": kwargs,
                "success": bool(res.success),
                "unexpected_count": res.result.get("unexpected_count"),
                "unexpected_sample": [str(v) for v in (res.result.get("partial_unexpected_list") or [])[:5]],
            })
    failed = [c for c in checks if not c["success"]]
    report = {"stage": stage, "passed": not failed, "n_checks": len(checks), "n_failed": len(failed),
              "seconds": round(time.perf_counter() - start, 3), "checks": checks}
    write_json(out_dir / "data_checks.json", report)
    if failed:
        lines = [f"{stage}: {len(failed)} of {len(checks)} data checks failed:"]
        lines += [f"  - {c['table']}: {c['expectation']} {c['kwargs']} unexpected={c['unexpected_count']} "
                  f"e.g. {c['unexpected_sample']}" for c in failed]
        raise DataGateFailed("\n".join(lines))
    log.info("%s: %d data checks passed", stage, len(checks))
    return report
