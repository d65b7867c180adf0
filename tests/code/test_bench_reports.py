"""The reports benchmark: field scores against truth, describe timings, its BENCHMARKS.md section."""

import json

import pytest

from medsegllm.bench.report import _goals
from medsegllm.bench.reports import bench_reports, render_reports, score_fields
from medsegllm.config import ReportsParams

LIVER = {"organ": "liver", "subtype": "hcc", "size_mm": 31.6}
KIDNEY = {"organ": "kidney", "subtype": "rcc", "size_mm": 20.0}


def test_field_scores_match_one_to_one_within_a_study():
    truth = [[LIVER, KIDNEY], [], [LIVER]]
    found = [
        [{"organ": "liver", "subtype": "hcc", "size_mm": 32.0}, {"organ": "kidney", "subtype": None, "size_mm": 25.0}],
        [{"organ": "liver", "subtype": "metastasis", "size_mm": None}],
        [],
    ]
    s = score_fields(truth, found)
    assert (s["organ"]["tp"], s["organ"]["fp"], s["organ"]["fn"]) == (2, 1, 1)
    assert (s["subtype"]["tp"], s["subtype"]["fp"], s["subtype"]["fn"]) == (1, 1, 2)
    assert (s["size_mm"]["tp"], s["size_mm"]["fp"], s["size_mm"]["fn"]) == (1, 1, 2)
    assert s["organ"]["precision"] == pytest.approx(2 / 3) and s["organ"]["f1"] == pytest.approx(2 / 3)


def test_bench_reports_on_a_small_cohort(tmp_path):
    cohort = tmp_path / "cohort"
    (cohort / "truth").mkdir(parents=True)
    reports = [("A1", "A 3.2 cm hepatocellular carcinoma in segment VII of the liver.", [LIVER]),
               ("A2", "No focal liver or renal lesion.", []),
               ("A3", "Hepatic cyst. No suspicious mass.", [])]
    (cohort / "reports.jsonl").write_text("".join(
        json.dumps({"accession_number": a, "report_text": t}) + "\n" for a, t, _ in reports))
    (cohort / "truth" / "studies.jsonl").write_text("".join(
        json.dumps({"accession_number": a, "lesions": les, "tumour_present": bool(les)}) + "\n" for a, _, les in reports))
    result = bench_reports(cohort, ["rules"], ReportsParams(backend="rules"))
    ex = result["extraction"]
    assert {k: v["f1"] for k, v in ex["fields"].items()} == {"organ": 1.0, "subtype": 1.0, "size_mm": 1.0}
    assert (ex["negative_reports"], ex["invented_on_negative"], ex["study_label_accuracy"]) == (2, 0, 1.0)
    (rules,) = result["describe"]
    assert rules["backend"] == "rules" and rules["cold"]["written_by_llm"] == 0 and rules["warm"]["seconds"] >= 0
    assert [g["met"] for g in result["goals"]] == [True] * 4
    text = "\n".join(render_reports({"reports": result, "data_dir": str(tmp_path)}, _goals))
    assert "| organ | 1.000 | 1.000 | 1.000 | 1 / 0 / 0 |" in text and "| rules | rules-kb |" in text
    assert bench_reports(tmp_path / "missing", ["rules"], ReportsParams()) is None
