"""Training-step and inference throughput: our engine vs a plain MONAI loop on the same network.

Data are synthetic in-memory slices of demo size, so the benchmark needs no pipeline run and
every contender sees the same arrays; speed does not depend on what the pixels show.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from monai.losses import DiceCELoss
from monai.networks.nets import UNet
from torch import nn
from torch.utils.data import DataLoader, Dataset

from medsegllm.bench.timing import paired_ratio, ratio, summary, sync, timed
from medsegllm.config import Params
from medsegllm.knowledge import LESION_CLASS, SEG_CLASSES, SUBTYPE_KEYS
from medsegllm.model.compiled import compile_blocker, compile_for_inference
from medsegllm.model.inference import bf16_supported, predict_volume
from medsegllm.model.network import build_model
from medsegllm.train.data import SeriesData, TrainSamples
from medsegllm.train.engine import train_model

TEXT_DIM = 384  # the sentence encoder's width; prompts and report embeddings live there
METHOD_PSEUDO_SHARE = 0.75  # the method's bench series that carry pseudo-labels, as most of the cohort does
PAPER_FPS = 6.0  # the paper's headline inference speed (27 M-parameter GPU model)


def bench_params(variant: str, batch_size: int, steps: int, epochs: int, device: str, channels: list[int],
                 precision: str = "auto", compile: bool = False, *, base: Params) -> Params:
    """`base` (a params file) with the benchmark's variant, sizes, device, precision and compile."""
    train = base.train.model_copy(update={"variant": variant, "batch_size": batch_size, "steps_per_epoch": steps,
                                          "epochs": epochs, "device": device, "channels": list(channels),
                                          "precision": precision, "compile": compile})
    return base.model_copy(update={"train": train})


def _label_volume(shape: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    """Liver and kidney ellipses on every slice, a small lesion on a third of them."""
    x, y = np.mgrid[: shape[0], : shape[1]]
    cx, cy = shape[0] / 2, shape[1] / 2
    label = np.zeros(shape, dtype=np.uint8)
    organ = np.zeros(shape[:2], dtype=np.uint8)
    organ[((x - cx + shape[0] / 6) / (shape[0] / 5)) ** 2 + ((y - cy) / (shape[1] / 4)) ** 2 < 1] = 1
    organ[((x - cx - shape[0] / 5) / (shape[0] / 12)) ** 2 + ((y - cy) / (shape[1] / 10)) ** 2 < 1] = 2
    for z in range(shape[2]):
        label[:, :, z] = organ
        if rng.random() < 0.35:
            lx, ly = int(cx - shape[0] / 6 + rng.integers(-4, 5)), int(cy + rng.integers(-4, 5))
            label[max(lx - 3, 0) : lx + 3, max(ly - 3, 0) : ly + 3, z] = LESION_CLASS
    return label


def synthetic_samples(n_series: int, shape: tuple[int, int, int], n_devices: int, pseudo_share: float, seed: int = 0) -> TrainSamples:
    """Demo-sized labelled (and `pseudo_share` pseudo-labelled) series with report embeddings."""
    rng = np.random.default_rng(seed)
    series, slices, lesion = [], [], []
    for i in range(n_series):
        label = _label_volume(shape, rng)
        image = np.clip(label / 4.0 + rng.normal(0, 0.1, shape), 0, 1).astype(np.float32)
        pseudo = i >= round(n_series * (1 - pseudo_share))
        weight = np.where(rng.random(shape) > 0.2, rng.uniform(0.6, 1.0, shape), 0.0).astype(np.float32) if pseudo else None
        series.append(SeriesData(f"bench{i:03d}", image, label, weight, i % n_devices, i,
                                 rng.normal(size=TEXT_DIM).astype(np.float32), int(rng.integers(len(SUBTYPE_KEYS)))))
        usable = (label == LESION_CLASS) if weight is None else (label == LESION_CLASS) & (weight > 0)
        for z in range(shape[2]):
            if usable[:, :, z].any():
                lesion.append(len(slices))
            slices.append((i, z))
    return TrainSamples(series, [f"bench_device_{d}" for d in range(n_devices)], np.asarray(slices, dtype=np.int64),
                        np.asarray(lesion, dtype=np.int64), TEXT_DIM)


def prompts(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random class and subtype prompt embeddings of the encoder's width."""
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(len(SEG_CLASSES), TEXT_DIM)).astype(np.float32),
            rng.normal(size=(len(SUBTYPE_KEYS), TEXT_DIM)).astype(np.float32))


def bench_engine(variant: str, samples: TrainSamples, batch_size: int, steps: int, reps: int, device: str,
                 channels: list[int], precision: str = "auto", compile: bool = False,
                 after_epoch: Callable[[], None] | None = None, *, base: Params) -> tuple[dict, nn.Module]:
    """`train_model` for 1 + reps epochs of `steps` steps; epoch 1 is the warm-up and is not counted.

    Epoch seconds cover batch sampling, forward, all losses, backward and the optimizer step,
    but not the per-epoch checkpoint write. `after_epoch` runs after each epoch (outside its
    seconds): a contender timed there shares the engine's load, for paired ratios. With `compile`
    the warm-up epoch carries the compiling: `warmup_s` is its seconds; `compile` in the result says
    whether it compiled (the engine trains eagerly where inductor cannot run).
    """
    params = bench_params(variant, batch_size, steps, 1 + reps, device, channels, precision, compile, base=base)
    class_prompts, subtype_prompts = prompts()
    model = build_model(params.train, samples.device_ids, class_prompts, subtype_prompts)
    rows: list[dict] = []

    def log(row: dict) -> None:
        rows.append(row)
        if after_epoch is not None:
            after_epoch()

    with tempfile.TemporaryDirectory(prefix="bench-train-") as out:
        result = train_model(model, samples, params, Path(out), log_callback=log)
    times = [row["seconds"] for row in rows[1:]]
    stats = summary(times)
    return {**stats, "steps_per_rep": steps, "batch_size": batch_size, "precision": result["precision"],
            "compile": result["compiled"], "warmup_s": rows[0]["seconds"],
            "samples_per_s": steps * batch_size / stats["median_s"],
            "parameters": sum(p.numel() for p in model.parameters())}, model


def plain_unet(channels: list[int], n_classes: int) -> UNet:
    """The baseline's MONAI U-Net, built directly: same channels, strides, residual units and norm."""
    return UNet(spatial_dims=2, in_channels=1, out_channels=n_classes, channels=tuple(channels),
                strides=(2,) * (len(channels) - 1), num_res_units=1, norm="instance")


class SliceCrops(Dataset):
    """The same in-memory labelled slices, randomly cropped to the ROI and flipped, as a torch Dataset."""

    def __init__(self, samples: TrainSamples, roi: tuple[int, int], seed: int = 0) -> None:
        self.samples, self.roi = samples, roi
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.samples.slices)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        si, z = self.samples.slices[index]
        s = self.samples.series[si]
        image, label = s.image[:, :, z], s.label[:, :, z]
        starts = [int(self.rng.integers(0, max(n - r, 0) + 1)) for n, r in zip(image.shape, self.roi)]
        out_image = np.zeros(self.roi, dtype=np.float32)
        out_label = np.zeros(self.roi, dtype=np.int64)
        part = (slice(starts[0], starts[0] + self.roi[0]), slice(starts[1], starts[1] + self.roi[1]))
        out_image[: image[part].shape[0], : image[part].shape[1]] = image[part]
        out_label[: label[part].shape[0], : label[part].shape[1]] = label[part]
        for axis in (0, 1):
            if self.rng.random() < 0.5:
                out_image, out_label = np.flip(out_image, axis), np.flip(out_label, axis)
        return torch.from_numpy(out_image.copy())[None], torch.from_numpy(out_label.copy())[None]


def monai_loop(samples: TrainSamples, roi: tuple[int, int], batch_size: int, steps: int, lr: float, device: str,
               channels: list[int]) -> tuple[Callable[[], None], nn.Module]:
    """A textbook MONAI loop: UNet, DiceCELoss, Adam, fp32 eager, DataLoader; `chunk()` runs `steps` steps."""
    dev = torch.device(device)
    torch.manual_seed(0)
    net = plain_unet(channels, len(SEG_CLASSES)).to(dev)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    loader = DataLoader(SliceCrops(samples, roi), batch_size=batch_size, shuffle=True, drop_last=True, num_workers=0)
    batches = itertools.chain.from_iterable(itertools.repeat(loader))
    net.train()

    def chunk() -> None:
        for _ in range(steps):
            image, label = next(batches)
            image, label = image.to(dev), label.to(dev)
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(net(image), label)
            loss.backward()
            optimizer.step()
        sync(dev)

    return chunk, net


def _loop_stats(times: list[float], steps: int, batch_size: int, net: nn.Module) -> dict:
    stats = summary(times)
    return {**stats, "steps_per_rep": steps, "batch_size": batch_size,
            "samples_per_s": steps * batch_size / stats["median_s"],
            "parameters": sum(p.numel() for p in net.parameters())}


def _paired_engine(variant: str, samples: TrainSamples, batch_size: int, steps: int, reps: int, device: str,
                   channels: list[int], precision: str, monai_chunk: Callable[[], None],
                   compile: bool = False, *, base: Params) -> tuple[dict, nn.Module, list[float]]:
    """Our engine with a MONAI chunk timed after each of its epochs: (engine stats, model, MONAI seconds
    paired with the engine's timed epochs). The chunk after the warm-up epoch is the MONAI loop's warm-up."""
    monai_times: list[float] = []
    stats, model = bench_engine(variant, samples, batch_size, steps, reps, device, channels, precision, compile,
                                after_epoch=lambda: monai_times.append(timed(monai_chunk)[0]), base=base)
    return stats, model, monai_times[1:]


def bench_train(cohort: dict[str, TrainSamples], roi: tuple[int, int], batch_size: int, steps: int, reps: int,
                device: str, channels: list[int], base: Params) -> tuple[dict, dict[str, nn.Module]]:
    """Our engine on unet_baseline (default precision, fp32, then compiled in the default precision, from a
    cold inductor cache) with the plain MONAI loop interleaved per epoch, then the medsegllm variant
    (compiled as `base.train.compile` says); the baselines train on labelled slices only. `base`: the
    params file whose other settings every run keeps; `cohort`: `bench_cohort`'s series per variant."""
    samples, labelled = cohort["medsegllm"], cohort["unet_baseline"]
    chunk, net = monai_loop(labelled, roi, batch_size, steps, base.train.lr, device, channels)
    baseline, baseline_model, monai_times = _paired_engine("unet_baseline", labelled, batch_size, steps, reps, device,
                                                           channels, "auto", chunk, base=base)
    fp32, _, monai_fp32_times = _paired_engine("unet_baseline", labelled, batch_size, steps, reps, device, channels,
                                               "fp32", chunk, base=base)
    with cold_inductor_cache():
        compiled, _, monai_compiled_times = _paired_engine("unet_baseline", labelled, batch_size, steps, reps, device,
                                                           channels, "auto", chunk, compile=True, base=base)
        ours, ours_model = bench_engine("medsegllm", samples, batch_size, steps, reps, device, channels,
                                        compile=base.train.compile, base=base)
    monai = _loop_stats(monai_times, steps, batch_size, net)
    result = {
        "monai_loop": monai,
        "engine_unet_baseline": baseline,
        "engine_unet_baseline_fp32": fp32,
        "engine_unet_baseline_compiled": compiled,
        "engine_medsegllm": ours,
        "baseline_vs_monai": ratio(baseline["samples_per_s"], monai["samples_per_s"]),
        "medsegllm_vs_monai": ratio(ours["samples_per_s"], monai["samples_per_s"]),
        # per-epoch pairs (MONAI s / engine s): a neighbour's load burst hits both sides of a pair alike
        "paired_baseline_vs_monai": paired_ratio(monai_times, [float(t) for t in baseline["runs_s"]]),
        "paired_baseline_fp32_vs_monai": paired_ratio(monai_fp32_times, [float(t) for t in fp32["runs_s"]]),
        "paired_baseline_compiled_vs_monai": paired_ratio(monai_compiled_times, [float(t) for t in compiled["runs_s"]]),
    }
    return result, {"medsegllm": ours_model, "unet_baseline": baseline_model}


def _plain_sliding_window(net: nn.Module, volume: np.ndarray, roi: tuple[int, int], device: torch.device) -> np.ndarray:
    """What a MONAI user writes: all axial slices through sliding_window_inference, then softmax."""
    slices = torch.from_numpy(np.ascontiguousarray(np.moveaxis(volume, 2, 0)))[:, None].to(device)
    net.eval()
    with torch.no_grad():
        logits = sliding_window_inference(slices, roi_size=roi, sw_batch_size=32, predictor=net, overlap=0.25, mode="gaussian")
        probs = torch.softmax(logits, dim=1).cpu().numpy()
    return np.moveaxis(probs, 0, -1)


def bench_inference(models: dict[str, nn.Module], shape: tuple[int, int, int], reps: int, device: str) -> dict:
    """predict_volume for both variants vs plain sliding-window inference on the baseline's own
    MONAI U-Net (same weights), interleaved per repetition after one warm-up call each."""
    dev = torch.device(device)
    volume = np.random.default_rng(1).random(shape, dtype=np.float32)
    ours, baseline = models["medsegllm"].to(dev), models["unet_baseline"].to(dev)
    roi = tuple(baseline.roi_size)
    device_id = ours.device_ids[0]
    compiled, compile_s, not_compiled = {}, {}, {}
    with cold_inductor_cache():
        for name, model in (("medsegllm", ours), ("unet_baseline", baseline)):  # `segment --compile`: copies, compiled in place
            compiled[name], start = copy.deepcopy(model), time.perf_counter()
            not_compiled[name] = compile_for_inference(compiled[name])
            compile_s[name] = time.perf_counter() - start
    contenders = {
        "predict_volume_medsegllm": lambda: predict_volume(ours, volume, device_id),
        "predict_volume_medsegllm_mirror": lambda: predict_volume(ours, volume, device_id, mirror=True),
        "predict_volume_unet_baseline": lambda: predict_volume(baseline, volume, device_id),
        "predict_volume_unet_baseline_fp32": lambda: predict_volume(baseline, volume, device_id, precision="fp32"),
        "monai_sliding_window": lambda: _plain_sliding_window(baseline.backbone, volume, roi, dev),
        "predict_volume_unet_baseline_compiled": lambda: predict_volume(compiled["unet_baseline"], volume, device_id),
        "predict_volume_medsegllm_compiled": lambda: predict_volume(compiled["medsegllm"], volume, device_id),
    }
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for fn in contenders.values():
        fn()
    for _ in range(reps):
        for name, fn in contenders.items():
            times[name].append(timed(fn)[0])
    auto = predict_volume(baseline, volume, device_id).argmax(0)
    result: dict = {"volume_shape": list(shape), "roi": list(roi), "precision_auto": "bf16" if bf16_supported(dev) else "fp32",
                    "argmax_agreement_auto_vs_fp32": float((auto == predict_volume(baseline, volume, device_id, precision="fp32").argmax(0)).mean()),
                    "compile_s": compile_s, "not_compiled": not_compiled,
                    "compiled_max_abs_diff": {name: float(np.abs(predict_volume(compiled[name], volume, device_id)
                                                                 - predict_volume(model, volume, device_id)).max())
                                              for name, model in (("medsegllm", ours), ("unet_baseline", baseline))}}
    for name, values in times.items():
        stats = summary(values)
        result[name] = {**stats, "slices_per_s": shape[2] / stats["median_s"]}
    plain = result["monai_sliding_window"]["slices_per_s"]
    result["baseline_vs_monai"] = ratio(result["predict_volume_unet_baseline"]["slices_per_s"], plain)
    result["medsegllm_vs_monai"] = ratio(result["predict_volume_medsegllm"]["slices_per_s"], plain)
    result["paired_baseline_vs_monai"] = paired_ratio(times["monai_sliding_window"], times["predict_volume_unet_baseline"])
    result["paired_medsegllm_vs_monai"] = paired_ratio(times["monai_sliding_window"], times["predict_volume_medsegllm"])
    result["paired_baseline_fp32_vs_monai"] = paired_ratio(times["monai_sliding_window"], times["predict_volume_unet_baseline_fp32"])
    for name in compiled:
        result[f"paired_{name}_compiled_vs_monai"] = paired_ratio(times["monai_sliding_window"], times[f"predict_volume_{name}_compiled"])
        result[f"{name}_compiled_break_even_slices"] = break_even_slices(
            compile_s[name], result[f"predict_volume_{name}"]["slices_per_s"], result[f"predict_volume_{name}_compiled"]["slices_per_s"])
    return result


@contextlib.contextmanager
def cold_inductor_cache() -> Iterator[None]:
    """Compile into an empty inductor cache, as a first `segment --compile` on a machine does (a
    cache left by an earlier run would make compiling look nearly free)."""
    previous = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    with tempfile.TemporaryDirectory(prefix="medsegllm-inductor-") as cache:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
        try:
            yield
        finally:
            if previous is None:
                del os.environ["TORCHINDUCTOR_CACHE_DIR"]
            else:
                os.environ["TORCHINDUCTOR_CACHE_DIR"] = previous


def break_even_slices(compile_s: float, eager_slices_per_s: float, compiled_slices_per_s: float) -> float | None:
    """Slices after which compiling first has paid for itself, or None if the compiled model is not faster."""
    saved_per_slice = 1.0 / eager_slices_per_s - 1.0 / compiled_slices_per_s
    return compile_s / saved_per_slice if saved_per_slice > 0 else None


# the paired ratios each round of the models section records, by name: (section, key)
ROUND_FIGURES = {
    "engine, train.compile": ("train", "paired_baseline_compiled_vs_monai"),
    "engine, default precision": ("train", "paired_baseline_vs_monai"),
    "engine, fp32": ("train", "paired_baseline_fp32_vs_monai"),
    "inference, default precision": ("inference", "paired_baseline_vs_monai"),
    "inference, compiled": ("inference", "paired_unet_baseline_compiled_vs_monai"),
}


def median_round(rounds: list[dict]) -> dict:
    """Of several `bench_models` runs on one device, the one whose engine goal figure (paired, with
    train.compile) is the median, with every round's paired ratios beside it (`rounds`).

    One run's ratios moved by 0.1-0.2x between runs on the 2-core machine BENCHMARKS.md names, more
    than the differences the goals turn on; the goal is judged on the median round, its range named.
    """
    if len(rounds) % 2 == 0:
        raise ValueError(f"an odd number of rounds has a median round, not {len(rounds)}")
    figures = [{name: r[section][key] for name, (section, key) in ROUND_FIGURES.items()} for r in rounds]
    goal_values = [f["engine, train.compile"] or 0.0 for f in figures]
    chosen = sorted(range(len(rounds)), key=goal_values.__getitem__)[len(rounds) // 2]
    result = copy.deepcopy(rounds[chosen])
    result["rounds"] = {"chosen": chosen, "figures": figures}
    if len(rounds) > 1:
        result["train"]["goals"][0]["measure"] += (f"; the median of {len(rounds)} rounds of this section, which ranged "
                                                   f"{min(goal_values):.2f} to {max(goal_values):.2f}")
    return result


def bench_cohort(n_series: int, shape: tuple[int, int, int]) -> dict[str, TrainSamples]:
    """The synthetic series each variant's engine rows train on: the method's, `METHOD_PSEUDO_SHARE`
    of them pseudo-labelled, and the baselines', all labelled."""
    return {"medsegllm": synthetic_samples(n_series, shape, n_devices=4, pseudo_share=METHOD_PSEUDO_SHARE),
            "unet_baseline": synthetic_samples(n_series, shape, n_devices=4, pseudo_share=0.0)}


def bench_models(cohort: dict[str, TrainSamples], batch_size: int, steps: int, reps: int,
                 infer_shape: tuple[int, int, int], infer_reps: int, device: str, channels: list[int],
                 base: Params | None = None) -> dict:
    """Training on `bench_cohort`'s series, then inference on one device; the trained models are reused
    for inference. `base`: the params file the runs start from (project defaults; `bench.gpu` passes
    configs/gpu.yaml)."""
    base = base or Params()
    roi = tuple(base.train.roi_size)
    train, models = bench_train(cohort, roi, batch_size, steps, reps, device, channels, base)
    infer = bench_inference(models, infer_shape, infer_reps, device)
    method = cohort["medsegllm"]
    train["data"] = {"n_series": len(method.series), "series_shape": list(method.series[0].image.shape), "roi": list(roi),
                     "medsegllm_pseudo_share": METHOD_PSEUDO_SHARE, "channels": list(channels)}
    speedup = 1.5 if device == "cpu" else 2.5  # issue #7: engine vs a plain fp32 eager MONAI loop
    compiled = train["engine_unet_baseline_compiled"]
    train["goals"] = [
        {"goal": f"our engine on the same network (unet_baseline) >= {speedup:g}x the plain MONAI loop's samples/s",
         "value": train["paired_baseline_compiled_vs_monai"],
         "measure": (f"paired engine / MONAI loop per epoch, with train.compile ({compiled['precision']}; its first "
                     f"epoch, compiling, {compiled['warmup_s']:.0f} s; eager: {train['paired_baseline_vs_monai']:.2f})"
                     if compiled["compile"] else "paired engine / MONAI loop per epoch, eager: train.compile cannot "
                     f"compile on this machine ({compile_blocker(torch.device(device))})"),
         "met": (train["paired_baseline_compiled_vs_monai"] or 0.0) >= speedup,
         "digits": 3},  # 1.496 would read 1.50 beside "not met"
    ]
    infer["goals"] = [
        {"goal": "predict_volume (default precision) on the same network faster than plain MONAI sliding_window_inference (fp32)",
         "value": infer["paired_baseline_vs_monai"], "measure": "paired ours / MONAI slices/s",
         "met": (infer["paired_baseline_vs_monai"] or 0.0) > 1.0},
        {"goal": "predict_volume compiled (`segment --compile`) on the same network faster than plain MONAI "
                 "sliding_window_inference (fp32), once compiled", "value": infer["paired_unet_baseline_compiled_vs_monai"],
         "measure": (f"paired ours / MONAI slices/s, after {infer['compile_s']['unet_baseline']:.0f} s of compiling"
                     if infer["not_compiled"]["unet_baseline"] is None else f"not compiled: {infer['not_compiled']['unet_baseline']}"),
         "met": infer["not_compiled"]["unet_baseline"] is None and (infer["paired_unet_baseline_compiled_vs_monai"] or 0.0) > 1.0},
        {"goal": f"paper headline {PAPER_FPS:g} FPS (its 27 M-parameter GPU model; this one: "
                 f"{train['engine_medsegllm']['parameters']:,} parameters)",
         "value": infer["predict_volume_medsegllm"]["slices_per_s"], "measure": "medsegllm slices/s",
         "met": infer["predict_volume_medsegllm"]["slices_per_s"] >= PAPER_FPS},
    ]
    return {"device": device, "train": train, "inference": infer,
            "median_of": {"train": reps, "inference": infer_reps}, "statistics": "median"}

