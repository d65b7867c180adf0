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
    lesions_per_tumour_study: tuple[int, int] = Field(
        (2, 4), description="fewest and most lesions of a tumour-positive study (one subtype), drawn uniformly")
    phi_fraction: float = Field(0.25, ge=0, le=1, description="reports carrying identifying text")

    @model_validator(mode="after")
    def _lesion_range(self) -> "SynthParams":
        low, high = self.lesions_per_tumour_study
        if not 1 <= low <= high:
            raise ValueError("synth.lesions_per_tumour_study must be [fewest, most] with 1 <= fewest <= most")
        return self


class MRStandardizationParams(_Section):
    """Nyul-style per-device MR histogram standardization (medsegllm.ingest.standardize)."""

    enabled: bool = Field(True, description="map each MR device's landmarks onto the standard scale of the training devices")
    landmarks: list[float] = Field(
        [10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0],
        description="foreground percentiles between the mr_percentiles ends (which robust normalization pins to 0 and 1)",
    )

    @model_validator(mode="after")
    def _increasing(self) -> "MRStandardizationParams":
        if not self.landmarks or any(not 0 < p < 100 for p in self.landmarks) or sorted(set(self.landmarks)) != self.landmarks:
            raise ValueError("mr_standardization.landmarks must be strictly increasing percentiles in (0, 100)")
        return self


class IngestParams(_Section):
    target_spacing: tuple[float, float, float] = Field((4.0, 4.0, 5.0), description="mm, RAS x y z")
    ct_window: tuple[float, float] = Field((-160.0, 240.0), description="HU window mapped to [0, 1]")
    mr_percentiles: tuple[float, float] = Field((1.0, 99.0), description="robust MR range mapped to [0, 1]")
    salt_env: str = Field("MEDSEGLLM_SALT", description="environment variable holding the pseudonym salt")
    salt_file: str = Field(".medsegllm/salt", description="used (and created) when the variable is unset")
    histogram_bins: int = Field(64, ge=8)
    pseudonymize_paths: bool = Field(
        True, description="quarantine tables name input files by salted per-component pseudonyms "
        "(`medsegllm quarantine-resolve` maps them back locally); false keeps relative paths, for trees without PHI"
    )
    mr_standardization: MRStandardizationParams = Field(default_factory=MRStandardizationParams)
    workers: int = Field(1, ge=1, description="processes for the header scan and the series (`--workers` overrides)")
    device_station: bool = Field(
        False, description="device_id gets a salted token of StationName ('_st' + 6 hex), telling apart scanners "
        "of one model; split.holdout_devices then names these ids"
    )


class SplitParams(_Section):
    holdout_devices: list[str] = Field(default_factory=list, description="device_ids never seen in training")
    val_fraction: float = Field(0.25, ge=0, lt=1, description="share of seen-device studies held for validation")


class LLMParams(_Section):
    """Settings every LLM description backend shares."""

    max_new_tokens: int = Field(40, ge=8, le=512, description="greedy decoding stops here (one sentence per lesion)")
    batch_size: int = Field(16, ge=1, description="prompts per generate() call of the local backends")
    threads: int | None = Field(
        None, ge=1, description="torch threads while a local model generates; null: torch's default (all cores)"
    )
    cache_dir: str | None = Field(
        ".medsegllm/cache/reports", description="generated text, reused across runs; null turns the cache off"
    )


class HFParams(_Section):
    model_dir: str | None = Field(None, description="local Hugging Face causal-LM folder with a chat template")


class OpenAIParams(_Section):
    base_url: str | None = Field(None, description="OpenAI-compatible API root, e.g. http://127.0.0.1:8000/v1")
    model: str | None = Field(None, description="model name the endpoint serves")
    api_key_env: str | None = Field("OPENAI_API_KEY", description="environment variable holding the key (never logged)")
    timeout_s: float = Field(60.0, gt=0)
    concurrency: int = Field(4, ge=1, description="requests in flight")


class ReportsParams(_Section):
    backend: Literal["rules", "smollm2", "hf", "openai"] = Field(
        "rules", description="who writes descriptions: rules templates, or an LLM checked by the guard"
    )
    prompt_version: str = "v1"
    batch_size: int = Field(32, ge=1, description="sentence-encoder batch")
    llm: LLMParams = Field(default_factory=LLMParams)
    hf: HFParams = Field(default_factory=HFParams)
    openai: OpenAIParams = Field(default_factory=OpenAIParams)

    @model_validator(mode="after")
    def _backend_settings(self) -> "ReportsParams":
        if self.backend == "hf" and not self.hf.model_dir:
            raise ValueError("reports.backend hf needs reports.hf.model_dir")
        if self.backend == "openai":
            if not (self.openai.base_url and self.openai.model):
                raise ValueError("reports.backend openai needs reports.openai.base_url and reports.openai.model")
            if not self.openai.base_url.startswith(("http://", "https://")):
                raise ValueError("reports.openai.base_url must start with http:// or https://")
        return self


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
    lesion_threshold: float | None = Field(
        0.15, gt=0, lt=1, description="fused lesion probability that makes a voxel lesion even when an organ has more mass; None: argmax only"
    )
    locate_by_image: bool = Field(
        True, description="place each reported lesion where the image is most conspicuous at the reported size, not at the sublocation centre"
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
    seen_stats: Literal["running", "test_time"] = Field(
        "running", description="statistics for a device seen in training, at inference: its branch's running statistics "
        "from training, or the batch's own, so that every scanner is normalized by its own images (AdaBN)"
    )


class PDMParams(_Section):
    enabled: bool = True
    p_max: float = Field(0.5, ge=0, le=1, description="final probability of mixing a batch")
    beta: float = Field(0.3, gt=0, description="Beta(b, b) mixing strength")
    ramp_epochs: int = Field(4, ge=1, description="epochs for the probability to grow from 0 to p_max")
    amplitude_mix: float = Field(
        0.0, ge=0, le=1, description="image-level mixing: largest share of a cross-device partner's Fourier amplitude "
        "blended into an image (phase kept), drawn per sample with the same ramping probability; 0: off"
    )
    amplitude_band: float = Field(1.0, gt=0, le=1, description="share of the spectrum, lowest frequencies first, whose amplitude is mixed")


class ScannerAugParams(_Section):
    """Scanner-physics augmentation (train/scanner_aug.py): each effect with chance `prob`, strength up to its max."""

    enabled: bool = False
    prob: float = Field(0.5, ge=0, le=1, description="chance per sample of each effect")
    noise_max: float = Field(0.12, ge=0, description="noise standard deviation, in the [0, 1] intensity scale")
    noise_corr_max_vox: float = Field(1.0, ge=0, description="in-plane correlation length of the noise, voxels")
    blur_max_vox: float = Field(1.0, ge=0, description="in-plane Gaussian blur sigma (point-spread function), voxels")
    bias_max: float = Field(0.1, ge=0, description="coefficient range of MONAI's RandBiasField (degree 3); 0.1 shades a "
                            "crop by a factor of about 1.9 (median max/min)")
    min_zoom: float = Field(0.5, gt=0, le=1, description="coarsest matrix simulated (MONAI RandSimulateLowResolution)")


class PseudoLossParams(_Section):
    enabled: bool = True
    weight: float = Field(0.5, ge=0)
    ema_decay: float = Field(0.99, ge=0, lt=1, description="teacher = EMA of the student: ema <- decay*ema + (1-decay)*student, per step")
    refresh_every: int = Field(0, ge=0, description="re-fuse the pseudo-labels with the EMA teacher every N epochs; 0: never")
    refresh_start: int = Field(8, ge=1, description="first epoch (1-based) after which a refresh may run")
    refresh_mirror: bool = Field(
        False, description="test-time mirroring in the refresh rounds' teacher predictions (4x their time); the pseudolabel "
        "stage's teacher, validation and `segment` follow train.inference.mirror"
    )
    lesion_weight: float = Field(
        1.0, ge=0, le=1, description="factor on pseudo-labelled lesion voxels' loss weight: report-placed lesions are the "
        "least reliable pseudo-labels; 0 keeps only the report's negative evidence (no lesion in a lesion-free study)"
    )
    ema_warmup: bool = Field(
        True, description="decay min(ema_decay, (1+n)/(10+n)) after n updates: the teacher forgets the random initial weights"
    )


class PostprocessParams(_Section):
    """Label-map rules the model carries (its metadata) to validation and `segment` (model/postprocess.py)."""

    enabled: bool = True
    min_lesion_diameter_mm: float = Field(
        8.0, ge=0, description="lesion components smaller than a sphere of this diameter are dropped (0: keep all)"
    )
    lesions_in_organs: bool = Field(True, description="drop lesion components that touch no organ a lesion subtype occurs in")
    organ_bodies: bool = Field(
        True, description="keep only each organ's largest connected components, as many as the knowledge base's `bodies` "
        "(one liver, two kidneys); the organ's other components become background"
    )


class InferenceParams(_Section):
    """How the model predicts wherever it segments (validation, `segment`, the pseudo-label teachers); the model carries it."""

    mirror: bool = Field(
        True, description="test-time mirroring (nnU-Net's): the mean softmax of the volume and its x, y and x+y mirror "
        "images, the flips training augments with; 4x the inference time"
    )


class TrainParams(_Section):
    variant: Literal["medsegllm", "unet_baseline"] = "medsegllm"
    backbone: Literal["unet", "segresnet", "swinunetr"] = Field(
        "unet", description="MONAI backbone (the baseline: unet or swinunetr); swinunetr: channels[0] is its feature size"
    )
    norm: Literal["batch", "instance"] = Field(
        "batch", description="backbone normalization of the medsegllm variant; DAN needs batch (per-device statistics)"
    )
    spatial_dims: Literal[2, 3] = Field(
        2, description="2: axial slice crops and slice-wise inference; 3: patches and sliding windows over the volume"
    )
    channels: list[int] = Field(default_factory=lambda: [16, 32, 64, 128])
    roi_size: tuple[int, ...] = Field((64, 64), description="crop / sliding window (x, y) or (x, y, z): one per spatial dim")
    epochs: int = Field(8, ge=1)
    steps_per_epoch: int = Field(30, ge=1)
    batch_size: int = Field(16, ge=1)
    lr: float = Field(2e-3, gt=0)
    class_weights: list[float] = Field(default_factory=lambda: [0.5, 1.0, 1.0, 3.0])
    lesion_oversample: float = Field(0.5, ge=0, le=1, description="share of batch slices drawn from lesion slices")
    intensity_aug: float = Field(
        0.0, ge=0, le=1, description="chance per slice of a random gamma/contrast/brightness/noise change"
    )
    scanner_aug: ScannerAugParams = ScannerAugParams()
    labelled_share: float | None = Field(
        None, ge=0, le=1, description="share of each batch's non-lesion slices drawn from voxel-labelled series when "
        "pseudo-labelled ones are present (they outnumber them ~9 to 1); null draws every slice alike"
    )
    alignment: AlignmentParams = AlignmentParams()
    kl: KLParams = KLParams()
    pseudolabels: PseudoLossParams = PseudoLossParams()
    dan: DANParams = DANParams()
    pdm: PDMParams = PDMParams()
    postprocess: PostprocessParams = PostprocessParams()
    inference: InferenceParams = InferenceParams()
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_threads: int = Field(0, ge=0, description="torch CPU threads; 0 keeps torch's default")
    compile: bool = Field(
        False, description="torch.compile the network in the training step (inductor: needs a C++ compiler, and triton on CUDA)"
    )
    precision: Literal["auto", "bf16", "fp32"] = Field(
        "auto", description="training compute precision; auto: bf16 autocast on CUDA or a CPU with native bf16, else fp32"
    )
    mlflow: bool = Field(
        False, description="log the training as an MLflow run in register.tracking_uri / register.experiment"
    )

    @model_validator(mode="after")
    def _roi_sizes(self) -> "TrainParams":
        """Window sizes the backbone can take: one per spatial dim, each divisible by its downsampling."""
        if len(self.roi_size) != self.spatial_dims:
            raise ValueError(f"train.roi_size has {len(self.roi_size)} values; train.spatial_dims {self.spatial_dims} "
                             f"needs {self.spatial_dims} ({'x, y' if self.spatial_dims == 2 else 'x, y, z'})")
        if self.backbone == "swinunetr":
            if self.channels[0] % 12:
                raise ValueError("train.backbone swinunetr: channels[0] (its feature size) must be a multiple of 12")
            # x and y at least 64 keep the bottleneck larger than one voxel; z may be 32 (thin volumes)
            if any(n % 32 for n in self.roi_size) or any(n < 64 for n in self.roi_size[:2]):
                raise ValueError("train.backbone swinunetr: roi_size must be a multiple of 32 and at least 64 on x and y "
                                 "(five 2x downsamplings; its normalization needs a bottleneck larger than 1x1); "
                                 f"got {list(self.roi_size)}")
        else:
            stride = 2 ** (len(self.channels) - 1)
            if len(self.channels) < 2 or any(n < 1 or n % stride for n in self.roi_size):
                raise ValueError(f"train.backbone {self.backbone}: every roi_size value must be a positive multiple of "
                                 f"{stride} (2 ** (len(channels) - 1) downsamplings) and channels needs at least 2 "
                                 f"levels; got roi_size {list(self.roi_size)}, channels {self.channels}")
        return self

    @model_validator(mode="after")
    def _dan_needs_batch_norm(self) -> "TrainParams":
        if self.variant == "medsegllm" and self.dan.enabled and self.norm != "batch":
            raise ValueError("train.dan keeps per-device batch-norm statistics: it needs train.norm: batch")
        return self


class GateParams(_Section):
    min_dice: float = Field(0.5, ge=0, le=1, description="mean foreground Dice over validation studies")
    max_js: float = Field(0.5, ge=0, le=1, description="mean cross-device JS divergence of model features")
    max_device_gap: float = Field(0.35, ge=0, le=1, description="best minus worst per-device Dice")
    min_device_series: int = Field(
        3, ge=1, description="devices with fewer validation series are reported but left out of the gap"
    )


class ValidateParams(_Section):
    gates: GateParams = GateParams()
    bootstrap: int = Field(200, ge=0, description="bootstrap resamples (over studies) for the 95 % CIs")
    lesion_size_bins_mm: list[float] = Field(
        default_factory=lambda: [0.0, 10.0, 20.0, 30.0],
        description="lower edges of the lesion-size bins (equivalent-sphere diameter, mm) for detection sensitivity",
    )
    mirror: bool | None = Field(
        None, description="test-time mirroring while validating; null: the model's own train.inference.mirror (set "
                          "it to compare both ways without retraining: train.inference also drives the pseudo-label refreshes)",
    )

    @model_validator(mode="after")
    def _bins_ascend(self) -> "ValidateParams":
        edges = self.lesion_size_bins_mm
        if not edges or any(b <= a for a, b in zip(edges, edges[1:])) or edges[0] < 0:
            raise ValueError("validate.lesion_size_bins_mm must be non-negative and strictly increasing")
        return self


class RegisterParams(_Section):
    tracking_uri: str = Field("sqlite:///mlflow.db", description="relative sqlite paths resolve against the CWD")
    model_name: str = "medsegllm"
    experiment: str = "medsegllm"
    primary_metric: str = "dice_mean"


class RetryParams(_Section):
    retries: int = Field(2, ge=0, description="retries per task after a failure")
    delay_s: float = Field(60.0, gt=0, description="wait before the first retry")
    backoff: float = Field(2.0, ge=1, description="delay multiplier per retry (exponential backoff); 1: constant")
    max_delay_s: float = Field(1800.0, gt=0, description="cap on the delay between retries")

    @model_validator(mode="after")
    def _cap_above_delay(self) -> "RetryParams":
        if self.max_delay_s < self.delay_s:
            raise ValueError("airflow.retry.max_delay_s must be >= delay_s")
        return self


class TimeoutParams(_Section):
    """Per-task execution_timeout in minutes: a hung task fails (and retries) instead of blocking the run."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    synth: float = Field(30, gt=0)
    ingest: float = Field(120, gt=0, description="also each ingest shard and the merge")
    reports: float = Field(60, gt=0)
    pseudolabel: float = Field(240, gt=0)
    train: float = Field(720, gt=0)
    validation: float = Field(120, gt=0, alias="validate")
    registration: float = Field(30, gt=0, alias="register")
    check: float = Field(15, gt=0, description="each data-gate task")

    def minutes(self, stage: str) -> float:
        """Timeout of a stage's task, by the stage's name."""
        return self.model_dump(by_alias=True)[stage]


class KubernetesParams(_Section):
    """Where and how the Airflow tasks run as pods (airflow.mode: kubernetes)."""

    image: str = Field("medsegllm/medsegllm:0.1.0", description="the project image (docker/Dockerfile)")
    gpu_image: str = Field("medsegllm/medsegllm:0.1.0-cuda", description="the train task's image (docker/Dockerfile.cuda)")
    namespace: str = "medsegllm"
    pvc: str = Field("medsegllm-data", description="PersistentVolumeClaim holding inputs and run folders")
    mount_path: str = Field("/data", description="where the claim is mounted in every pod")
    in_cluster: bool = Field(True, description="False: use the worker's kubeconfig")
    service_account: str | None = None
    salt_secret: str = Field("medsegllm-salt", description="Secret whose key `salt` becomes $MEDSEGLLM_SALT in every pod")
    cpu: str = "2"
    memory: str = "8Gi"
    train_gpus: int = Field(1, ge=0, description="nvidia.com/gpu requested by the train task")
    train_cpu: str = "8"
    train_memory: str = "32Gi"

    @model_validator(mode="after")
    def _absolute_mount(self) -> "KubernetesParams":
        if not self.mount_path.startswith("/"):
            raise ValueError("airflow.kubernetes.mount_path must be absolute")
        return self


class AirflowParams(_Section):
    schedule: str | None = Field("@weekly", description="cron or preset; None: only new input data triggers runs")
    data_root: str = Field("data", description="run folders: <data_root>/airflow/<run_id>; relative to the project (local) or the PVC mount (kubernetes)")
    input_asset: str = Field("file:///data/incoming", description="Asset URI whose events (new data) trigger a run")
    mode: Literal["local", "kubernetes"] = Field("local", description="tasks run in the worker, or as pods")
    ingest_shards: int = Field(1, ge=1, description="ingest fans out over this many shards (dynamic task mapping)")
    retry: RetryParams = RetryParams()
    timeout_min: TimeoutParams = TimeoutParams()
    kubernetes: KubernetesParams = KubernetesParams()


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
    """Read and validate params; a missing file means all defaults.

    A file may start from another (`extends: ../params.yaml`, relative to itself) and hold only what
    it changes (configs/gpu.yaml): mappings merge key by key, lists and values replace.
    """
    path = Path(path)
    return Params.model_validate(_read_extended(path)) if path.exists() else Params()


def _read_extended(path: Path, seen: frozenset[Path] = frozenset()) -> dict:
    data = yaml.safe_load(path.read_text()) or {}
    base = data.pop("extends", None)
    if base is None:
        return data
    base_path = (path.parent / base).resolve()
    if base_path in seen or base_path == path.resolve():
        raise ValueError(f"params files extend each other in a cycle at {base_path}")
    return _merge(_read_extended(base_path, seen | {path.resolve()}), data)


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def parse_params(text: str) -> Params:
    """Validate params given as YAML text (how the Kubeflow components receive them)."""
    return Params.model_validate(yaml.safe_load(text) or {})
