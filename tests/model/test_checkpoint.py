import numpy as np
import torch

from medsegllm.knowledge import SEG_CLASSES
from medsegllm.model.checkpoint import load_model, model_meta, save_checkpoint
from medsegllm.model.inference import predict_volume
from medsegllm.model.network import build_model
from tests.model.synthetic import tiny_params


def test_checkpoint_round_trip_gives_identical_predictions(tmp_path, prompts) -> None:
    volume = np.random.default_rng(0).random((32, 32, 2), dtype=np.float32)
    for variant in ("medsegllm", "unet_baseline"):
        torch.manual_seed(0)
        model = build_model(tiny_params(variant=variant).train, ["a", "b"], *prompts)
        model.train()
        with torch.no_grad():  # move BN statistics away from their defaults
            model(torch.rand(4, 1, 32, 32), torch.tensor([0, 1, 0, 1]))
        path = tmp_path / f"{variant}.pt"
        save_checkpoint(path, model, model_meta(model, list(SEG_CLASSES)))
        loaded, meta = load_model(path)
        assert meta["variant"] == variant and meta["device_ids"] == ["a", "b"]
        for device in ("a", "b", "never_seen"):
            assert np.array_equal(predict_volume(model, volume, device), predict_volume(loaded, volume, device))
