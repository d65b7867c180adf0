"""Where the segmenting network comes from: a `train` checkpoint or an MLflow model URI."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from medsegllm.config import Params

MLFLOW_SCHEMES = ("models:/", "runs:/", "mlflow-artifacts:/")


class ModelUnavailable(RuntimeError):
    """The model named on the command line cannot be loaded; the message says why, without a traceback."""


def is_mlflow_uri(model: str) -> bool:
    """A registry or run URI; anything else is taken as a checkpoint path."""
    return model.startswith(MLFLOW_SCHEMES)


def load_segmenter(model: str, params: Params, base_dir: Path | None = None) -> tuple[nn.Module, dict]:
    """(network in eval mode, metadata) from a checkpoint path or an MLflow URI.

    Checkpoints load weights-only. MLflow models are stored in pickle format, so loading one runs
    code from the registry: point `registration.tracking_uri` only at a registry you trust. The
    registered `ExportedSegmenter` is unwrapped to its network so inference can still route known
    scanners to their own DAN branch.
    """
    if not is_mlflow_uri(model):
        from medsegllm.model.checkpoint import load_model

        path = Path(model)
        if not path.is_file():
            raise ModelUnavailable(f"model checkpoint {path} does not exist (or give an MLflow URI such as models:/medsegllm@champion)")
        return load_model(path)
    import mlflow.pytorch
    from mlflow.exceptions import MlflowException

    from medsegllm.register.run import tracking_uri_set, resolve_tracking_uri

    uri = resolve_tracking_uri(params.registration.tracking_uri, base_dir)
    try:
        with tracking_uri_set(uri):
            loaded = mlflow.pytorch.load_model(model, map_location="cpu")
    except MlflowException as exc:
        raise ModelUnavailable(f"cannot load {model} from {uri}: {exc.message}") from exc
    network = getattr(loaded, "model", None)
    if not isinstance(network, nn.Module) or not hasattr(network, "device_index"):
        raise ModelUnavailable(f"{model} is not a registered MedSegLLM model (expected an ExportedSegmenter)")
    network.eval()
    return network, {"device_ids": list(network.device_ids), "source": model, "tracking_uri": uri}
