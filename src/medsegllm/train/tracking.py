"""Training as an MLflow run (`train.mlflow`): params, tags, one metric point per epoch and refresh round.

The run lives in the register stage's store (`register.tracking_uri`, `register.experiment`), so a
registered version can point back to its training curves. Its id is kept beside the checkpoint
(`mlflow_run.json`): a resumed training continues the same run. Every write skips the (metric, step)
points the run already holds, so a resume, or the sync at the end of training, fills the epochs a
kill or an outage left out and never repeats one. The store is checked before any training starts;
an outage during training only defers the metric points to that final sync.
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from medsegllm import __version__, knowledge
from medsegllm.common.io import write_json
from medsegllm.config import Params
from medsegllm.register.run import (artifact_location, ensure_sqlite_store, experiment_id_for, flatten,
                                     resolve_tracking_uri)

log = logging.getLogger(__name__)

RUN_FILE = "mlflow_run.json"
EPOCH_METRICS = ("loss", "loss_seg", "loss_pseudo", "loss_align", "loss_kl", "pdm_p", "lr", "seconds")
ROUND_METRICS = ("dice_lesion_tumour", "dice_lesion", "dice_organs", "fraction_changed", "confident_fraction")
ROUND_PREFIX = "pseudo_"  # pseudo_rounds.csv columns, logged at the epoch of their round
GIT_COMMIT_TAG = "mlflow.source.git.commit"  # the key MLflow's UI shows
_BATCH = 100  # MLflow's limit on params or tags per log_batch (metrics: 1000)
_PROBE_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}


class TrackingUnavailable(RuntimeError):
    """The MLflow tracking store cannot be reached or opened; raised before training starts."""


@contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    """MLflow reads its HTTP retry settings from the environment at each request: bound them for a block."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _tracking_errors() -> tuple[type[BaseException], ...]:
    """What an unreachable or broken store raises (requests' errors are OSErrors)."""
    from mlflow.exceptions import MlflowException

    return MlflowException, OSError


def run_params(params: Params) -> dict[str, str]:
    """What shaped the trained model: the train, split and pseudolabel sections, seed and text versions."""
    return {
        **flatten("train", params.train.model_dump(mode="json")),
        **flatten("split", params.split.model_dump(mode="json")),
        **flatten("pseudolabel", params.pseudolabel.model_dump(mode="json")),
        "seed": str(params.seed),
        "prompt_version": params.reports.prompt_version,
        "kb_version": knowledge.KB_VERSION,
    }


def git_commit(cwd: Path | None = None) -> str | None:
    """HEAD of the checkout the training runs from; None outside git (a container image, a wheel)."""
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def run_tags(params: Params, base_dir: Path | None = None) -> dict[str, str]:
    tags = {
        "stage": "train",
        "variant": params.train.variant,
        "backbone": params.train.backbone,
        "prompt_version": params.reports.prompt_version,
        "kb_version": knowledge.KB_VERSION,
        "medsegllm_version": __version__,
    }
    commit = git_commit(base_dir)
    return {**tags, GIT_COMMIT_TAG: commit} if commit else tags


class TrainingRun:
    """An open MLflow training run that logs each (metric, step) point at most once."""

    def __init__(self, client, run_id: str, resumed: bool) -> None:
        self.client, self.run_id = client, run_id
        self._resumed = resumed
        self._steps: dict[str, set[int]] = {}
        self._deferred = False  # a write failed during training: the final sync retries it

    def _logged(self, key: str) -> set[int]:
        if key not in self._steps:
            history = self.client.get_metric_history(self.run_id, key) if self._resumed else []
            self._steps[key] = {m.step for m in history}
        return self._steps[key]

    def log_rows(self, rows: Iterable[dict], keys: Sequence[str], prefix: str = "") -> int:
        """Log `prefix + key` of every row at step `row['epoch']`, except points the run already has."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        new = []
        for row in rows:
            step = int(row["epoch"])
            for key in keys:
                value = row.get(key)
                if value is None or not math.isfinite(float(value)) or step in self._logged(prefix + key):
                    continue
                new.append(Metric(prefix + key, float(value), now, step))
        for i in range(0, len(new), 1000):
            self.client.log_batch(self.run_id, metrics=new[i : i + 1000])
        for metric in new:
            self._steps[metric.key].add(metric.step)
        return len(new)

    def log_epoch(self, row: dict, rounds: Sequence[dict] = ()) -> None:
        """`train_model`'s log_callback: the epoch's row and any new refresh round; an outage only defers them."""
        if self._deferred:
            return
        try:
            self.log_rows([row], EPOCH_METRICS)
            self.log_rows(rounds, ROUND_METRICS, ROUND_PREFIX)
        except _tracking_errors() as exc:
            self._deferred = True
            log.warning("MLflow run %s: logging failed (%s); the metrics are logged when training ends", self.run_id, exc)

    def finish(self, epochs: Sequence[dict], rounds: Sequence[dict], summary: dict) -> None:
        """Log whatever the run still lacks (all epochs and rounds, the stage's summary) and close it.

        Training is done and saved by now, so a failure here is a warning: `medsegllm train --resume`
        on the same output folder trains nothing more and logs the missing points.
        """
        try:
            self.log_rows(epochs, EPOCH_METRICS)
            self.log_rows(rounds, ROUND_METRICS, ROUND_PREFIX)
            last = int(epochs[-1]["epoch"]) if epochs else 0
            numbers = {k: v for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            self.log_rows([{**numbers, "epoch": last}], sorted(k for k in numbers if k not in (*EPOCH_METRICS, "epoch")))
            self.client.set_terminated(self.run_id, "FINISHED")
        except _tracking_errors() as exc:
            log.warning("MLflow run %s is incomplete (%s): rerun `medsegllm train --resume` with the same --out "
                        "to log the missing metrics", self.run_id, exc)

    def fail(self) -> None:
        """Mark the run FAILED after an exception in training (a resume reopens it)."""
        try:
            self.client.set_terminated(self.run_id, "FAILED")
        except _tracking_errors() as exc:
            log.warning("MLflow run %s: could not mark it failed (%s)", self.run_id, exc)


def _previous_run(client, out_dir: Path, uri: str) -> str | None:
    """The run id kept beside the checkpoint, when it is in this store and not deleted."""
    from mlflow.exceptions import MlflowException

    path = out_dir / RUN_FILE
    if not path.exists():
        return None
    saved = json.loads(path.read_text())
    if saved.get("tracking_uri") != uri:
        log.warning("%s names a run in %s, not in %s: starting a new MLflow run", path, saved.get("tracking_uri"), uri)
        return None
    try:
        run = client.get_run(saved["run_id"])
    except MlflowException:
        log.warning("MLflow run %s of %s is gone: starting a new MLflow run", saved["run_id"], path)
        return None
    return run.info.run_id if run.info.lifecycle_stage == "active" else None


def _log_params(client, run_id: str, wanted: dict[str, str], resumed: bool) -> None:
    """Log `wanted`; on resume only the params the run lacks (MLflow params are immutable), and tag changed ones."""
    from mlflow.entities import Param, RunTag

    existing = client.get_run(run_id).data.params if resumed else {}
    changed = sorted(k for k, v in wanted.items() if k in existing and existing[k] != v)
    if changed:
        log.warning("MLflow run %s resumed with changed params %s; the run keeps the values it started with",
                    run_id, ", ".join(changed))
        client.log_batch(run_id, tags=[RunTag("resumed_with_changed_params", ",".join(changed)[:5000])])
    new = [Param(k, v) for k, v in sorted(wanted.items()) if k not in existing]
    for i in range(0, len(new), _BATCH):
        client.log_batch(run_id, params=new[i : i + _BATCH])


def start_training_run(params: Params, out_dir: Path, resume: bool, base_dir: Path | None = None) -> TrainingRun:
    """Open the training run: the one kept beside the checkpoint when resuming, else a new one.

    A relative sqlite `register.tracking_uri` resolves against `base_dir` (default: the working
    directory), as the register stage resolves it. Raises `TrackingUnavailable` when the store does
    not answer (a server is tried twice, 20 s each), so nothing has been trained yet.
    """
    from mlflow import MlflowClient

    cfg = params.registration
    uri = resolve_tracking_uri(cfg.tracking_uri, base_dir)
    out_dir = Path(out_dir)
    try:
        with _environ(_PROBE_ENV):
            ensure_sqlite_store(uri)
            client = MlflowClient(tracking_uri=uri)
            experiment_id = experiment_id_for(client, cfg.experiment, artifact_location(uri))
            run_id = _previous_run(client, out_dir, uri) if resume and (out_dir / "checkpoint.pt").exists() else None
    except _tracking_errors() as exc:
        raise TrackingUnavailable(
            f"MLflow tracking store {uri} is not usable ({exc}); nothing was trained. Fix register.tracking_uri "
            "or start the server, or set train.mlflow: false"
        ) from exc
    resumed = run_id is not None
    if resumed:
        client.update_run(run_id, status="RUNNING")
        log.info("continuing MLflow run %s", run_id)
    else:
        run_id = client.create_run(experiment_id, tags=run_tags(params, base_dir)).info.run_id
        write_json(out_dir / RUN_FILE, {"run_id": run_id, "experiment_id": experiment_id, "tracking_uri": uri})
        log.info("MLflow run %s in experiment %s (%s)", run_id, cfg.experiment, uri)
    _log_params(client, run_id, run_params(params), resumed)
    return TrainingRun(client, run_id, resumed)
