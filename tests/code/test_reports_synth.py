"""Extraction agrees with the hidden truth of a small generated demo cohort."""

import json

import pytest

from medsegllm.config import SynthParams
from medsegllm.reports.extract import extract_findings
from medsegllm.reports.inputs import load_reports
from medsegllm.synth.cohort import generate_cohort


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    out = tmp_path_factory.mktemp("cohort")
    generate_cohort(out, SynthParams(n_studies=10, tumour_fraction=0.6, phi_fraction=0.5), seed=3)
    truth = [json.loads(line) for line in (out / "truth" / "studies.jsonl").read_text().splitlines()]
    # The cohort folder as a whole: top-level reports.jsonl plus a DICOM tree with no SR in it.
    reports = load_reports(out, "salt")
    assert len(reports) == len(truth)
    return truth, [extract_findings(r.text) for r in reports], reports


def _same(found: dict, true: dict) -> bool:
    size_ok = found["size_mm"] is not None and abs(found["size_mm"] - true["size_mm"]) <= max(2.0, 0.1 * true["size_mm"])
    return found["organ"] == true["organ"] and found["subtype"] == true["subtype"] and size_ok


def test_lesions_agree_with_truth(cohort):
    truth, findings, _ = cohort
    tp = fp = fn = located = 0
    for study, found in zip(truth, findings):
        unmatched = list(study["lesions"])
        for lesion in found.lesions:
            hit = next((t for t in unmatched if _same(lesion, t)), None)
            if hit is None:
                fp += 1
                continue
            unmatched.remove(hit)
            tp += 1
            located += (lesion["location"], lesion["laterality"]) == (hit["location"], hit["laterality"])
        fn += len(unmatched)
        if not study["tumour_present"]:
            assert found.lesions == [], "a finding was invented for a negative study"
    assert tp >= 4
    f1 = 2 * tp / (2 * tp + fp + fn)
    assert f1 >= 0.9 and located >= 0.9 * tp


def test_phi_reports_are_scrubbed(cohort):
    truth, _, reports = cohort
    with_phi = [r.text for t, r in zip(truth, reports) if t["report_has_phi"]]
    assert with_phi and all("[NAME]" in text for text in with_phi)
    assert all(r.phi_replaced == 0 for t, r in zip(truth, reports) if not t["report_has_phi"])
