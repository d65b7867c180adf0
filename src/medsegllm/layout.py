"""Where each stage's output lands under a run's data root: the layout of dvc.yaml, for the DAG and tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunLayout:
    root: Path

    @property
    def cohort(self) -> Path:
        return self.root / "cohort"

    @property
    def dicom(self) -> Path:
        return self.cohort / "dicom"

    @property
    def reports_file(self) -> Path:
        return self.cohort / "reports.jsonl"

    @property
    def truth(self) -> Path:
        return self.cohort / "truth"

    @property
    def ingested(self) -> Path:
        return self.root / "ingested"

    @property
    def ingest_shards(self) -> Path:
        """plan.json and one output folder per shard, when ingest fans out."""
        return self.root / "ingest_shards"

    @property
    def findings(self) -> Path:
        return self.root / "findings"

    @property
    def pseudolabels(self) -> Path:
        return self.root / "pseudolabels"

    @property
    def model_dir(self) -> Path:
        return self.root / "model"

    @property
    def model(self) -> Path:
        return self.model_dir / "model.pt"

    @property
    def validation(self) -> Path:
        return self.root / "validation"

    @property
    def registry(self) -> Path:
        return self.root / "registry"
