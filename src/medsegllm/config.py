"""`params.yaml`, validated by one typed model.

Every stage reads only its own section; DVC tracks the same keys (`params:` in dvc.yaml), so the
names here are the names a user types in `dvc exp run -S train.epochs=5`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SynthParams(_Section):
    n_studies: int = Field(48, ge=4, description="studies in the demo cohort")
    label_fraction: float = Field(0.10, gt=0, le=1, description="studies with voxel labels (DICOM SEG)")
    tumour_fraction: float = Field(0.20, ge=0, le=1, description="studies with at least one lesion")
    phi_fraction: float = Field(0.25, ge=0, le=1, description="reports carrying identifying text")


class IngestParams(_Section):
    target_spacing: tuple[float, float, float] = Field((4.0, 4.0, 5.0), description="mm, RAS x y z")
    ct_window: tuple[float, float] = Field((-160.0, 240.0), description="HU window mapped to [0, 1]")
    mr_percentiles: tuple[float, float] = Field((1.0, 99.0), description="robust MR range mapped to [0, 1]")
    salt_env: str = Field("MEDSEGLLM_SALT", description="environment variable holding the pseudonym salt")
    salt_file: str = Field(".medsegllm/salt", description="used (and created) when the variable is unset")
    histogram_bins: int = Field(64, ge=8)


class SplitParams(_Section):
    holdout_devices: list[str] = Field(default_factory=list, description="device_ids never seen in training")
    val_fraction: float = Field(0.25, ge=0, lt=1, description="share of seen-device studies held for validation")


class ReportsParams(_Section):
    backend: Literal["rules"] = "rules"
    prompt_version: str = "v1"
    batch_size: int = Field(32, ge=1)


class PseudolabelParams(_Section):
    alpha: float = Field(0.7, ge=0, le=1, description="weight of the teacher in alpha*P + (1-alpha)*K")
    confidence_threshold: float = Field(0.6, gt=0, lt=1)
    teacher_epochs: int = Field(6, ge=1)
    teacher_lesion_oversample: float | None = Field(
        None, ge=0, le=1, description="teacher's train.lesion_oversample; None keeps the student's value"
    )
    lesions_from_report: bool = Field(
        True, description="keep fused lesion mass only where the report places a lesion (the rest goes to the organ)"
    )


class AlignmentParams(_Section):
    enabled: bool = True
    weight: float = Field(0.1, ge=0)
    temperature: float = Field(0.07, gt=0)


class KLParams(_Section):
    enabled: bool = True
    weight: float = Field(0.05, ge=0)


class DANParams(_Section):
    enabled: bool = True
    shared_prob: float = Field(0.2, ge=0, le=1, description="chance a sample takes the shared path in training")
    shared_affine: bool = Field(
        False, description="branches keep own statistics, one shared scale/shift (False: checkpoints before it)"
    )
    unseen_stats: Literal["shared", "test_time"] = Field(
        "shared", description="statistics for a device never seen in training: the shared branch's, or the batch's own"
    )


class PDMParams(_Section):
    enabled: bool = True
    p_max: float = Field(0.5, ge=0, le=1, description="final probability of mixing a batch")
    beta: float = Field(0.3, gt=0, description="Beta(b, b) mixing strength")
    ramp_epochs: int = Field(4, ge=1, description="epochs for the probability to grow from 0 to p_max")


class PseudoLossParams(_Section):
    enabled: bool = True
    weight: float = Field(0.5, ge=0)


class TrainParams(_Section):
    variant: Literal["medsegllm", "unet_baseline"] = "medsegllm"
    backbone: Literal["unet", "segresnet"] = "unet"
    spatial_dims: Literal[2] = 2
    channels: list[int] = Field(default_factory=lambda: [16, 32, 64, 128])
    roi_size: tuple[int, int] = (64, 64)
    epochs: int = Field(8, ge=1)
    steps_per_epoch: int = Field(30, ge=1)
    batch_size: int = Field(16, ge=1)
    lr: float = Field(2e-3, gt=0)
    class_weights: list[float] = Field(default_factory=lambda: [0.5, 1.0, 1.0, 3.0])
    lesion_oversample: float = Field(0.5, ge=0, le=1, description="share of batch slices drawn from lesion slices")
    intensity_aug: float = Field(
        0.0, ge=0, le=1, description="chance per slice of a random gamma/contrast/brightness/noise change"
    )
    alignment: AlignmentParams = AlignmentParams()
    kl: KLParams = KLParams()
    pseudolabels: PseudoLossParams = PseudoLossParams()
    dan: DANParams = DANParams()
    pdm: PDMParams = PDMParams()
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_threads: int = Field(0, ge=0, description="torch CPU threads; 0 keeps torch's default")


class GateParams(_Section):
    min_dice: float = Field(0.5, ge=0, le=1, description="mean foreground Dice over validation studies")
    max_js: float = Field(0.5, ge=0, le=1, description="mean cross-device JS divergence of model features")
    max_device_gap: float = Field(0.35, ge=0, le=1, description="best minus worst per-device Dice")
    min_device_series: int = Field(
        3, ge=1, description="devices with fewer validation series are reported but left out of the gap"
    )


class ValidateParams(_Section):
    gates: GateParams = GateParams()
    bootstrap: int = Field(200, ge=0)


class RegisterParams(_Section):
    tracking_uri: str = Field("sqlite:///mlflow.db", description="relative sqlite paths resolve against the CWD")
    model_name: str = "medsegllm"
    experiment: str = "medsegllm"
    primary_metric: str = "dice_mean"


class AirflowParams(_Section):
    schedule: str = "@weekly"
    data_root: str = "data"


class Params(_Section):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    seed: int = 42
    synth: SynthParams = SynthParams()
    ingest: IngestParams = IngestParams()
    split: SplitParams = SplitParams()
    reports: ReportsParams = ReportsParams()
    pseudolabel: PseudolabelParams = PseudolabelParams()
    train: TrainParams = TrainParams()
    # Section names are the stage names; the attributes avoid shadowing pydantic's own methods.
    validation: ValidateParams = Field(ValidateParams(), alias="validate")
    registration: RegisterParams = Field(RegisterParams(), alias="register")
    airflow: AirflowParams = AirflowParams()

    @model_validator(mode="after")
    def _class_weights_match_classes(self) -> "Params":
        from medsegllm.knowledge import SEG_CLASSES

        if len(self.train.class_weights) != len(SEG_CLASSES):
            raise ValueError(f"train.class_weights needs {len(SEG_CLASSES)} values, one per class {SEG_CLASSES}")
        return self


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate params; a missing file means all defaults."""
    path = Path(path)
    return parse_params(path.read_text()) if path.exists() else Params()


def parse_params(text: str) -> Params:
    """Validate params given as YAML text (how the Kubeflow components receive them)."""
    return Params.model_validate(yaml.safe_load(text) or {})
