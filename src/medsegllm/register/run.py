"""The register stage: log a validated model to MLflow and decide which alias it earns.

`champion` moves only to a version whose validation gate passed and whose primary metric beats
the current champion's on the same validation data (same `validation_data_hash`); every other
registered version becomes `challenger`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medsegllm import __version__, knowledge
from medsegllm.common.io import atomic_path, remove_partials, write_json
from medsegllm.config import Params
from medsegllm.register.export import ExportedSegmenter

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
ARTIFACTS = ("report.html", "metrics.json", "per_device.csv", "per_modality.csv", "lesion_detection.csv",
             "gate.json", "validation.json")
PLOTS = "plots"  # the report's figures as PNG files
TRAINING_RUN_TAG = "training_run_id"  # on the registration run and the model version
_LOWER_IS_BETTER = ("hd95", "js_", "gap")


class RegistrationRefused(RuntimeError):
    """The model did not pass its validation gate, so it must not be registered."""


def resolve_tracking_uri(uri: str, cwd: Path | None = None) -> str:
    """Make a relative `sqlite:///file.db` absolute against `cwd`; other URIs pass unchanged."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix) :].startswith("/"):
        return prefix + str(((cwd or Path.cwd()) / uri[len(prefix) :]).resolve())
    return uri


def artifact_location(tracking_uri: str) -> str | None:
    """`mlartifacts/` beside a sqlite store (so nothing lands in ./mlruns); a server keeps its own."""
    if tracking_uri.startswith("sqlite:///"):
        return (Path(tracking_uri[len("sqlite:///") :]).parent / "mlartifacts").as_uri()
    return None


def ensure_sqlite_store(tracking_uri: str) -> None:
    """Create a missing sqlite tracking store whole or not at all. MLflow builds its schema in many
    steps, and a store killed between them can never be opened again ("table already exists"), so a
    new store is built under a temporary name and linked into place unless another run's won."""
    from mlflow import MlflowClient

    prefix = "sqlite:///"
    if not tracking_uri.startswith(prefix):
        return
    store = Path(tracking_uri[len(prefix) :])
    for stale in remove_partials(store.parent, recursive=False):  # an earlier, killed creation
        Path(f"{stale}-journal").unlink(missing_ok=True)
    if store.exists():
        return
    with atomic_path(store, exclusive=True) as tmp:
        MlflowClient(tracking_uri=f"{prefix}{tmp}").search_experiments()


def flatten(prefix: str, value: Any) -> dict[str, str]:
    """Nested params as dotted keys, the form `dvc exp run -S` and MLflow search use."""
    if isinstance(value, dict):
        out: dict[str, str] = {}
        for key, sub in value.items():
            out.update(flatten(f"{prefix}.{key}" if prefix else str(key), sub))
        return out
    return {prefix: str(value)}


def is_better(new: float, old: float, metric_name: str) -> bool:
    """Strictly better, in the metric's own direction (Dice up; distances and divergences down)."""
    if any(token in metric_name for token in _LOWER_IS_BETTER):
        return new < old
    return new > old


def _read_validation(validation_dir: Path) -> tuple[dict, dict]:
    """(gate verdict, metrics); refuses a model whose gate did not pass."""
    gate = json.loads((validation_dir / "gate.json").read_text())
    if not gate.get("passed"):
        failed = ", ".join(c["name"] for c in gate.get("checks", []) if not c.get("passed"))
        raise RegistrationRefused(f"validation gate did not pass ({failed or 'no checks'}); refusing to register")
    return gate, json.loads((validation_dir / "metrics.json").read_text())


@contextmanager
def tracking_uri_set(uri: str) -> Iterator[None]:
    """Point MLflow's process-global URIs (which it mirrors into the environment) at `uri` for
    the block only, so a library call leaves no tracking store behind for later code or children."""
    import mlflow

    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(saved["MLFLOW_TRACKING_URI"])
        mlflow.set_registry_uri(saved["MLFLOW_REGISTRY_URI"])
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def experiment_id_for(client, name: str, location: str | None) -> str:
    """The id of experiment `name`, created (artifacts at `location`) when missing; train and register share it."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    return client.create_experiment(name, artifact_location=location)


def _training_link(client, training_run_id: str | None, experiment_id: str) -> dict[str, str]:
    """Tags that lead from the registration run to the training run (`train.mlflow`) in this store:
    `training_run_id`, and MLflow's parent tag when both share the experiment (nested in the UI)."""
    from mlflow.exceptions import MlflowException

    if not training_run_id:
        return {}
    try:
        training = client.get_run(training_run_id)
    except MlflowException:
        log.warning("training run %s is not in this tracking store: the registration is not linked to it", training_run_id)
        return {}
    link = {TRAINING_RUN_TAG: training_run_id}
    return {**link, "mlflow.parentRunId": training_run_id} if training.info.experiment_id == experiment_id else link


def _current_champion(client, model_name: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(model_name, CHAMPION)
    except MlflowException:
        return None


def run_register(model_path: Path, validation_dir: Path, out_dir: Path, params: Params, base_dir: Path | None = None) -> dict:
    """Log model, params, metrics and validation artifacts; register a version and set its alias.

    A relative sqlite tracking URI resolves against `base_dir` (default: the working directory).
    """
    import mlflow
    from mlflow import MlflowClient

    from medsegllm.model.checkpoint import load_model

    validation_dir, out_dir = Path(validation_dir), Path(out_dir)
    remove_partials(out_dir)
    gate, metrics = _read_validation(validation_dir)
    cfg = params.registration
    metric_name = cfg.primary_metric
    metric = metrics.get(metric_name)
    if metric is None:
        raise ValueError(f"primary metric {metric_name!r} is missing or not finite in {validation_dir / 'metrics.json'}")
    data_hash = gate.get("validation_data_hash", "")

    uri = resolve_tracking_uri(cfg.tracking_uri, base_dir)
    ensure_sqlite_store(uri)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment_id = experiment_id_for(client, cfg.experiment, artifact_location(uri))

    model, meta = load_model(model_path)
    exported = ExportedSegmenter(model).eval()
    example = np.zeros((1, 1, *meta["train"]["roi_size"]), dtype=np.float32)
    run_params = {
        **flatten("train", params.train.model_dump(mode="json")),
        **flatten("validate", params.validation.model_dump(mode="json")),
        **flatten("split", params.split.model_dump(mode="json")),
        "seed": str(params.seed),
        "prompt_version": params.reports.prompt_version,
        "kb_version": knowledge.KB_VERSION,
    }
    tags = {
        "kb_version": knowledge.KB_VERSION,
        "prompt_version": params.reports.prompt_version,
        "variant": str(meta.get("variant")),
        "validation_data_hash": data_hash,
        "medsegllm_version": __version__,
        **_training_link(client, meta.get("mlflow_run_id"), experiment_id),
    }
    with tracking_uri_set(uri), mlflow.start_run(experiment_id=experiment_id, tags=tags) as run:
        mlflow.log_params(run_params)
        mlflow.log_metrics({k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and np.isfinite(v)})
        for name in ARTIFACTS:
            if (validation_dir / name).exists():
                mlflow.log_artifact(str(validation_dir / name), artifact_path="validation")
        if (validation_dir / PLOTS).is_dir():
            mlflow.log_artifacts(str(validation_dir / PLOTS), artifact_path=f"validation/{PLOTS}")
        model_info = mlflow.pytorch.log_model(
            exported,
            name="model",
            serialization_format="pickle",
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", _pinned("monai"), _pinned("numpy"), _pinned("pydantic"), _pinned("PyYAML")],
            code_paths=[str(Path(__file__).resolve().parents[1])],
            input_example=example,
            registered_model_name=cfg.model_name,
        )
        run_id = run.info.run_id
    version = str(model_info.registered_model_version)
    for key in ("validation_data_hash", "variant", "kb_version", "prompt_version", TRAINING_RUN_TAG):
        if key in tags:
            client.set_model_version_tag(cfg.model_name, version, key, tags[key])

    alias, previous, reason = _choose_alias(client, cfg.model_name, metric_name, float(metric), data_hash)
    client.set_registered_model_alias(cfg.model_name, alias, version)
    log.info("registered %s version %s as %s (%s)", cfg.model_name, version, alias, reason)
    record = {
        "model_name": cfg.model_name,
        "version": version,
        "alias": alias,
        "reason": reason,
        "metric_name": metric_name,
        "metric": float(metric),
        "previous_champion_version": previous,
        "run_id": run_id,
        "training_run_id": tags.get(TRAINING_RUN_TAG),
        "model_uri": f"models:/{cfg.model_name}@{alias}",
        "tracking_uri": uri,
    }
    write_json(out_dir / "registration.json", record)
    return record


def _choose_alias(client, model_name: str, metric_name: str, metric: float, data_hash: str) -> tuple[str, str | None, str]:
    """(alias, previous champion version, why)."""
    champion = _current_champion(client, model_name)
    if champion is None:
        return CHAMPION, None, "no champion yet"
    champion_run = client.get_run(champion.run_id)
    old = champion_run.data.metrics.get(metric_name)
    if champion_run.data.tags.get("validation_data_hash") != data_hash:
        return CHALLENGER, str(champion.version), "validation data differ from the champion's: not comparable"
    if old is None or is_better(metric, old, metric_name):
        return CHAMPION, str(champion.version), f"{metric_name} {metric:.4f} beats champion's {old}"
    return CHALLENGER, str(champion.version), f"{metric_name} {metric:.4f} does not beat champion's {old:.4f}"


def _pinned(package: str) -> str:
    from importlib.metadata import version

    return f"{package}=={version(package)}"
