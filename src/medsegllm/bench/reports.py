"""Reports stage: extraction quality against the synthetic cohort's hidden truth, and describe speed.

Extraction is scored per field over lesions (organ, subtype, size within 1 mm: the reports round
sizes to 1 mm or 0.1 cm), matched one-to-one within a study; findings on truth-negative studies are
counted as invented. Throughput times `get_backend(...).describe(...)` per backend: cold (empty
cache, model load included) and warm (the same cache, a fresh backend object).
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from medsegllm.common.deid import pseudonym
from medsegllm.config import ReportsParams
from medsegllm.reports.backends import get_backend
from medsegllm.reports.extract import extract_findings
from medsegllm.reports.inputs import load_reports

SIZE_TOLERANCE_MM = 1.0
F1_GOAL = 0.95
COLD_GOAL_S = 120.0
_SALT = "bench-reports"  # joins reports to truth inside this benchmark only
_FIELDS: dict[str, Callable[[object, object], bool]] = {
    "organ": lambda a, b: a == b,
    "subtype": lambda a, b: a == b,
    "size_mm": lambda a, b: abs(a - b) <= SIZE_TOLERANCE_MM,
}


def score_fields(truth: list[list[dict]], predicted: list[list[dict]]) -> dict:
    """Per field: precision, recall, F1 of predicted lesion values against the truth, study by study.

    A predicted value counts once against at most one true lesion of the same study; a missing
    (None) predicted value is a false negative, not a false positive.
    """
    scores = {}
    for field, same in _FIELDS.items():
        tp = fp = fn = 0
        for true_lesions, found in zip(truth, predicted, strict=True):
            left = [t[field] for t in true_lesions]
            for value in (lesion[field] for lesion in found if lesion[field] is not None):
                hit = next((i for i, t in enumerate(left) if same(value, t)), None)
                if hit is None:
                    fp += 1
                else:
                    tp += 1
                    left.pop(hit)
            fn += len(left)
        precision = tp / (tp + fp) if tp + fp else 1.0
        recall = tp / (tp + fn) if tp + fn else 1.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        scores[field] = {"tp": tp, "fp": fp, "fn": fn, "precision": precision, "recall": recall, "f1": f1}
    return scores


def bench_extraction(cohort_dir: Path) -> dict:
    """Rule extraction on the cohort's reports.jsonl against truth/studies.jsonl."""
    studies = [json.loads(line) for line in (cohort_dir / "truth" / "studies.jsonl").read_text().splitlines()]
    by_accession = {pseudonym(s["accession_number"], _SALT): s for s in studies}
    reports = load_reports(cohort_dir / "reports.jsonl", _SALT)
    truth = [by_accession[r.accession_id] for r in reports]
    started = time.perf_counter()
    found = [extract_findings(r.text) for r in reports]
    seconds = time.perf_counter() - started
    negatives = [f for t, f in zip(truth, found) if not t["tumour_present"]]
    return {
        "reports": len(reports),
        "extract_seconds": seconds,
        "extract_reports_per_s": len(reports) / seconds,
        "true_lesions": sum(len(t["lesions"]) for t in truth),
        "fields": score_fields([t["lesions"] for t in truth], [f.lesions for f in found]),
        "negative_reports": len(negatives),
        "invented_on_negative": sum(len(f.lesions) for f in negatives),
        "study_label_accuracy": sum(t["tumour_present"] == f.tumour_present for t, f in zip(truth, found)) / len(truth),
    }


def bench_describe(cohort_dir: Path, backend: str, params: ReportsParams) -> dict:
    """Cold then warm describe() of every report with one backend, in a fresh cache folder."""
    findings = [extract_findings(r.text).as_dict() for r in load_reports(cohort_dir / "reports.jsonl", _SALT)]
    with tempfile.TemporaryDirectory(prefix="medsegllm-bench-cache-") as cache:
        llm = params.llm.model_copy(update={"cache_dir": cache})
        runs = {}
        for phase in ("cold", "warm"):
            started = time.perf_counter()
            describer = get_backend(params.model_copy(update={"backend": backend, "llm": llm}))
            descriptions = describer.describe(findings)
            seconds = time.perf_counter() - started
            runs[phase] = {"seconds": seconds, "reports_per_s": len(findings) / seconds, **describer.stats,
                           "written_by_llm": sum(d.backend != "rules" for d in descriptions)}
    return {"backend": backend, "model_id": describer.model_id, "reports": len(findings), **runs}


def bench_reports(cohort_dir: Path, backends: list[str], params: ReportsParams) -> dict | None:
    """Extraction scores plus describe timings; None when there is no generated cohort to score."""
    if not (cohort_dir / "reports.jsonl").is_file() or not (cohort_dir / "truth" / "studies.jsonl").is_file():
        return None
    extraction = bench_extraction(cohort_dir)
    describe = [bench_describe(cohort_dir, name, params) for name in backends]
    goals = [
        {"goal": f"extraction F1 >= {F1_GOAL} for {field}", "value": extraction["fields"][field]["f1"],
         "met": extraction["fields"][field]["f1"] >= F1_GOAL}
        for field in _FIELDS
    ]
    goals.append({"goal": "no finding invented on a negative report", "value": extraction["invented_on_negative"],
                  "met": extraction["invented_on_negative"] == 0})
    for run in describe:
        if run["backend"] == params.backend and params.backend != "rules":
            goals.append({"goal": f"default backend ({run['backend']}) describes the cohort in <= {COLD_GOAL_S:g} s cold",
                          "value": run["cold"]["seconds"], "met": run["cold"]["seconds"] <= COLD_GOAL_S})
    return {"cohort": str(cohort_dir), "extraction": extraction, "describe": describe, "goals": goals}


def render_reports(r: dict, goals_table: Callable[[list[dict]], list[str]]) -> list[str]:
    """The BENCHMARKS.md section."""
    rep = r.get("reports")
    lines = ["## 4. Reports", ""]
    if rep is None:
        return lines + [f"No generated cohort (reports.jsonl + truth/) under `{r['data_dir']}/cohort`; nothing measured."]
    ex = rep["extraction"]
    lines += [
        f"Rule extraction on `{rep['cohort']}/reports.jsonl` ({ex['reports']} reports, {ex['true_lesions']} true "
        f"lesions) against the hidden truth; size correct within {SIZE_TOLERANCE_MM:g} mm. Extraction speed "
        f"{ex['extract_reports_per_s']:.0f} reports/s (scrubbing excluded).", "",
        "| field | precision | recall | F1 | tp / fp / fn |", "|---|---|---|---|---|",
        *[f"| {k} | {v['precision']:.3f} | {v['recall']:.3f} | {v['f1']:.3f} | {v['tp']} / {v['fp']} / {v['fn']} |"
          for k, v in sorted(ex["fields"].items())],  # as the JSON copy (sorted keys) reads back
        "", f"Study label (tumour present) accuracy {ex['study_label_accuracy']:.3f}; lesions invented on "
        f"{ex['negative_reports']} negative reports: {ex['invented_on_negative']}.", "",
        "Describe (all reports, cold = empty cache incl. model load, warm = same cache):", "",
        "| backend | model | cold s | cold reports/s | warm s | warm reports/s | prompts | LLM-written / rejected |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for d in rep["describe"]:
        c, w = d["cold"], d["warm"]
        lines.append(f"| {d['backend']} | {d['model_id']} | {c['seconds']:.2f} | {c['reports_per_s']:.1f} | "
                     f"{w['seconds']:.3f} | {w['reports_per_s']:.0f} | {c.get('llm_prompts', 0)} | "
                     f"{c['written_by_llm']} / {c.get('llm_rejected', 0)} |")
    return lines + goals_table(rep["goals"])
