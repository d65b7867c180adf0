"""The reports stage: reports in, `findings.parquet`, `class_prompts.parquet` and `summary.json` out."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pyarrow as pa

from medsegllm.common.deid import salt_fingerprint
from medsegllm.common import io
from medsegllm.common.schemas import CLASS_PROMPTS, FINDINGS
from medsegllm.config import ReportsParams
from medsegllm.knowledge import CLASS_PROMPTS as SEG_CLASS_PROMPTS
from medsegllm.knowledge import KB_VERSION, SEG_CLASSES, SUBTYPE_KEYS, subtype_prompt
from medsegllm.reports import embed
from medsegllm.reports.backends import get_backend
from medsegllm.reports.extract import extract_findings
from medsegllm.reports.inputs import load_reports

# summary.json carries these for every backend (all zero for rules), so runs compare column for column.
LLM_COUNTS = {"llm_prompts": 0, "llm_cache_hits": 0, "llm_generated": 0, "llm_accepted": 0, "llm_rejected": 0,
              "llm_reject_reasons": {}}


def run_reports(input_path: Path, out_dir: Path, params: ReportsParams, salt: str) -> dict:
    """Scrub, extract, describe and embed every report; write the stage's tables and summary."""
    started = time.perf_counter()
    out_dir = Path(out_dir)
    io.remove_partials(out_dir)
    backend = get_backend(params)
    reports = load_reports(Path(input_path), salt)
    findings = [extract_findings(report.text).as_dict() for report in reports]
    descriptions = backend.describe(findings)
    embeddings = embed.encode([d.text for d in descriptions], params.batch_size)
    rows = [
        {
            "report_id": report.report_id,
            "accession_id": report.accession_id,
            "report_text": report.text,
            "tumour_present": f["tumour_present"],
            "subtype": f["subtype"],
            "organ": f["organ"],
            "max_size_mm": f["max_size_mm"],
            "lesions_json": json.dumps(f["lesions"], sort_keys=True),
            "negated_json": json.dumps(f["negated"], sort_keys=True),
            "dropped_fields": f["dropped_fields"],
            "description": description.text,
            "embedding": vector.tolist(),
            "backend": description.backend,
            "model_id": description.model_id,
            "prompt_version": params.prompt_version,
        }
        for report, f, description, vector in zip(reports, findings, descriptions, embeddings, strict=True)
    ]
    io.write_parquet(out_dir / "findings.parquet", pa.Table.from_pylist(rows, schema=FINDINGS))
    io.write_parquet(out_dir / "class_prompts.parquet", class_prompts_table(params.batch_size))
    summary = {
        "reports": len(rows),
        "salt_fingerprint": salt_fingerprint(salt),
        "tumour_present": sum(f["tumour_present"] for f in findings),
        "lesions": sum(len(f["lesions"]) for f in findings),
        "negated": sum(len(f["negated"]) for f in findings),
        "dropped_fields": sum(f["dropped_fields"] for f in findings),
        "instruction_sentences_skipped": sum(f["skipped_sentences"] for f in findings),
        "phi_replaced": sum(report.phi_replaced for report in reports),
        "backend": backend.name,
        "backend_model_id": backend.model_id,
        **LLM_COUNTS,
        **backend.stats,
        "embedding_model_id": embed.model_id(),
        "prompt_version": params.prompt_version,
        "kb_version": KB_VERSION,
        "seconds": round(time.perf_counter() - started, 3),
    }
    io.write_json(out_dir / "summary.json", summary)
    return summary


def class_prompts_table(batch_size: int = 32) -> pa.Table:
    """Segmentation classes then subtypes, in knowledge-base order, each with its embedding."""
    entries = [(name, "seg_class", SEG_CLASS_PROMPTS[name]) for name in SEG_CLASSES]
    entries += [(key, "subtype", subtype_prompt(key)) for key in SUBTYPE_KEYS]
    vectors = embed.encode([text for _, _, text in entries], batch_size)
    rows = [
        {"name": name, "kind": kind, "text": text, "embedding": vector.tolist()}
        for (name, kind, text), vector in zip(entries, vectors, strict=True)
    ]
    return pa.Table.from_pylist(rows, schema=CLASS_PROMPTS)
