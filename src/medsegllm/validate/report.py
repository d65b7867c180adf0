"""A self-contained static HTML validation report: one file, inline CSS, figures as base64 PNGs.

One file travels well (MLflow artifact, DVC output, e-mail) and needs no server. It shows only
series pseudonyms, never patient identifiers.
"""

from __future__ import annotations

import base64
import html
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medsegllm.common.io import write_text, write_with

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1100px}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ddd}
.scroll{overflow-x:auto}table{border-collapse:collapse;margin:.5em 0;font-size:.9em}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right;white-space:nowrap}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
.pass{color:#137333;font-weight:bold}.fail{color:#b3261e;font-weight:bold}
img{max-width:100%;border:1px solid #eee}.note{color:#666;font-size:.9em}
"""


@dataclass
class Case:
    """One validation case for the overlay figure: a 2D slice of image, reference and prediction."""

    title: str
    series_id: str
    dice: float
    image: np.ndarray
    reference: np.ndarray
    prediction: np.ndarray


def _fmt(value: Any) -> str:
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return "n/a" if not math.isfinite(value) else f"{value:.3f}"
    return html.escape(str(value))


def _table(frame: pd.DataFrame, table_id: str) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(v)}</td>" for v in row) + "</tr>" for row in frame.itertuples(index=False))
    return f"<div class='scroll'><table id='{table_id}'><tr>{head}</tr>{body}</table></div>"


def _pyplot():
    """pyplot on the file-only Agg backend: reports are rendered on headless workers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    _pyplot().close(fig)
    return buffer.getvalue()


def _img(name: str, png: bytes) -> str:
    return f'<img alt="{name}" id="fig-{name}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _figure(width: float, height: float):
    return _pyplot().subplots(figsize=(width, height))


def _js_chart(metrics: dict[str, float]) -> bytes:
    """Before/after pairs: intensities raw -> harmonized, features without -> with DAN+PDM."""
    fig, ax = _figure(5.5, 3.2)
    pairs = [("intensities", "js_intensity_raw", "js_intensity_harmonized", "raw", "harmonized"),
             ("model features", "js_features_without_dan_pdm", "js_features", "without DAN+PDM", "with DAN+PDM")]
    for i, (group, before, after, before_label, after_label) in enumerate(pairs):
        for offset, key, label, color in ((-0.2, before, before_label, "#999"), (0.2, after, after_label, "#e07b39")):
            value = metrics.get(key, float("nan"))
            finite = value is not None and math.isfinite(value)
            ax.bar(i + offset, value if finite else 0.0, width=0.38, color=color)
            ax.text(i + offset, (value if finite else 0.0) + 0.01, f"{label}\n{_fmt(value) if finite else 'not measured'}",
                    ha="center", va="bottom", fontsize=7)
    floor = metrics.get("js_features_floor")
    if floor is not None and math.isfinite(floor):  # two halves of one device's patients: sampling alone
        ax.hlines(floor, 0.75, 1.25, colors="#333", linestyles="dashed")
        ax.text(1.27, floor, f"patient-sampling\nfloor {_fmt(floor)}", va="center", fontsize=7)
        ax.set_xlim(-0.6, 1.9)
    ax.set_xticks([0, 1], [p[0] for p in pairs])
    ax.set_ylabel("mean pairwise JS (bits)")
    ax.set_ylim(0, max(0.1, *[metrics.get(k) or 0.0 for p in pairs for k in p[1:3]]) * 1.35)
    ax.set_title("Cross-device divergence (within modality): before / after")
    return _png(fig)


def _device_chart(per_device: pd.DataFrame) -> bytes:
    """Mean foreground Dice per device with its bootstrap 95 % CI; held-out devices hatched."""
    fig, ax = _figure(6, 3.2)
    x = np.arange(len(per_device))
    mean = per_device["dice_mean"].to_numpy(dtype=float)
    err = np.abs(np.vstack([mean - per_device["ci_low"].to_numpy(dtype=float), per_device["ci_high"].to_numpy(dtype=float) - mean]))
    holdout = per_device["holdout"].to_numpy(dtype=bool) if "holdout" in per_device else np.zeros(len(x), bool)
    ax.bar(x, np.nan_to_num(mean), yerr=np.nan_to_num(err), capsize=3,
           color=["#bbb" if h else "#4a90d9" for h in holdout])
    ax.set_xticks(x, per_device["device_id"], rotation=30, ha="right", fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_ylabel("Dice (95 % CI)")
    ax.set_title("Dice per device (grey: held out)")
    return _png(fig)


def _overlay(cases: list[Case], class_names: tuple[str, ...]) -> bytes:
    from matplotlib.lines import Line2D

    fig, axes = _pyplot().subplots(1, len(cases), figsize=(4 * len(cases), 4), squeeze=False)
    for ax, case in zip(axes[0], cases):
        ax.imshow(case.image.T, cmap="gray", origin="lower", vmin=0, vmax=1)
        for label in range(1, len(class_names)):
            for mask, style in ((case.reference, "-"), (case.prediction, "--")):
                if (mask == label).any():
                    ax.contour((mask == label).T.astype(float), levels=[0.5], colors=[f"C{label}"], linestyles=style, linewidths=1.2)
        ax.set_title(f"{case.title}: {case.series_id}\nDice {_fmt(case.dice)}", fontsize=9)
        ax.axis("off")
    handles = [Line2D([], [], color=f"C{i}", label=name) for i, name in enumerate(class_names) if i > 0]
    handles += [Line2D([], [], color="k", ls="-", label="reference"), Line2D([], [], color="k", ls="--", label="prediction")]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8)
    return _png(fig)


def _training_curve(train_log: pd.DataFrame) -> bytes:
    numeric = train_log.select_dtypes("number")
    x_name = next((c for c in ("step", "epoch") if c in numeric), None)
    x = numeric[x_name] if x_name else np.arange(len(numeric))
    fig, ax = _figure(6, 3.2)
    for column in numeric.columns:
        if column != x_name and column not in ("step", "epoch"):
            ax.plot(x, numeric[column], label=column)
    ax.set_xlabel(x_name or "row")
    ax.legend(fontsize=7)
    ax.set_title("Training log")
    return _png(fig)


def _scalars(summary: dict[str, Any]) -> pd.DataFrame:
    rows = [(k, v) for k, v in sorted(summary.items()) if isinstance(v, (int, float, str, bool)) and not isinstance(v, dict)]
    return pd.DataFrame(rows, columns=["quantity", "value"], dtype=object)  # object: counts stay integers


def _with_ci(frame: pd.DataFrame) -> pd.DataFrame:
    """Fold `x`, `x_ci_low`, `x_ci_high` (and `dice_mean`, `ci_low`, `ci_high`) into one 'x [low, high]' column."""
    out = frame.copy()
    folds = [("dice_mean", "ci_low", "ci_high")] + [
        (c[: -len("_ci_low")], c, c[: -len("_low")] + "_high") for c in frame.columns if c.endswith("_ci_low")
    ]
    for value, low, high in folds:
        if {value, low, high} <= set(out.columns):
            out[value] = [f"{_fmt(v)} [{_fmt(a)}, {_fmt(b)}]" for v, a, b in zip(out[value], out[low], out[high])]
            out = out.drop(columns=[low, high])
    return out


def render_report(
    metrics: dict[str, float],
    per_device: pd.DataFrame,
    per_modality: pd.DataFrame,
    gate: dict[str, Any],
    cases: list[Case],
    class_names: tuple[str, ...],
    lesion_detection: pd.DataFrame | None = None,
    pseudo_summary: dict[str, Any] | None = None,
    train_log: pd.DataFrame | None = None,
) -> tuple[str, dict[str, bytes]]:
    """(the whole report as one HTML string, its figures as PNG bytes by name)."""
    figures = {"js_divergence": _js_chart(metrics), "dice_per_device": _device_chart(per_device)}
    if cases:
        figures["best_worst_cases"] = _overlay(cases, class_names)
    if train_log is not None and not train_log.empty:
        figures["training_curve"] = _training_curve(train_log)
    verdict = '<span class="pass">PASSED</span>' if gate["passed"] else '<span class="fail">FAILED</span>'
    gate_rows = "".join(
        f"<tr><td>{html.escape(c['name'])}</td><td>{_fmt(c['value'])}</td><td>{html.escape(c['op'])} {_fmt(c['threshold'])}</td>"
        f"<td class=\"{'pass' if c['passed'] else 'fail'}\">{'pass' if c['passed'] else 'fail'}</td></tr>"
        for c in gate["checks"]
    )
    headline = pd.DataFrame([(k, metrics[k]) for k in sorted(metrics)], columns=["metric", "value"], dtype=object)
    fg = class_names[1:]
    per_class = pd.DataFrame(
        [(c, metrics.get(f"dice_{c}", float("nan")), metrics.get(f"dice_{c}_ci_low", float("nan")),
          metrics.get(f"dice_{c}_ci_high", float("nan"))) for c in fg],
        columns=["class", "dice", "dice_ci_low", "dice_ci_high"],
    )
    kappa = (f"Study-level lesion detection vs reference: Cohen's kappa {_fmt(metrics.get('detection_kappa', float('nan')))} "
             f"[{_fmt(metrics.get('detection_kappa_ci_low', float('nan')))}, {_fmt(metrics.get('detection_kappa_ci_high', float('nan')))}] "
             f"over {_fmt(metrics.get('n_studies', float('nan')))} studies; "
             f"{_fmt(metrics.get('lesions_false_positive', float('nan')))} predicted lesions overlap no reference lesion.")
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>MedSegLLM validation</title><style>{_CSS}</style></head><body>",
        f"<h1>MedSegLLM validation report</h1><p>Gate verdict: {verdict}</p>",
        "<h2>Gates</h2><table id='gates'><tr><th>check</th><th>value</th><th>threshold</th><th>result</th></tr>" + gate_rows + "</table>",
        "<h2>Dice per class</h2><p class='note'>Mean [95% bootstrap CI, resampling studies].</p>",
        _table(_with_ci(per_class), "per-class"),
        "<h2>Dice per device</h2><p class='note'>Mean [95% bootstrap CI, resampling studies]; holdout = device never seen in training.</p>",
        _table(_with_ci(per_device), "per-device"),
        _img("dice_per_device", figures["dice_per_device"]),
        "<h2>Dice per modality</h2>",
        _table(_with_ci(per_modality), "per-modality"),
    ]
    if lesion_detection is not None:
        parts += ["<h2>Lesion detection</h2><p class='note'>Reference lesions (connected components) by "
                  "equivalent-sphere diameter; detected = overlapped by the prediction; Wilson 95% CI. "
                  "Lesions smaller than one voxel of the validation grid cannot be resolved.</p>",
                  _table(lesion_detection, "lesion-detection"), f"<p>{html.escape(kappa)}</p>"]
    parts += ["<h2>Cross-device divergence</h2>", _img("js_divergence", figures["js_divergence"])]
    if cases:
        parts += ["<h2>Best and worst validation case</h2><p class='note'>Middle lesion slice (else the slice with most foreground).</p>",
                  _img("best_worst_cases", figures["best_worst_cases"])]
    parts.append("<h2>Pseudo-label quality</h2>")
    if pseudo_summary:
        parts += ["<p class='note'>From the pseudolabel stage: Dice of teacher and fused pseudo-labels against the reference.</p>",
                  _table(_scalars(pseudo_summary), "pseudo-labels")]
    else:
        parts.append("<p class='note'>Not available: validate was run without the pseudolabel stage's summary (--pseudolabels).</p>")
    if "training_curve" in figures:
        parts += ["<h2>Training curve</h2>", _img("training_curve", figures["training_curve"])]
    parts += ["<h2>All metrics</h2>", _table(headline, "all-metrics"), "</body></html>"]
    return "\n".join(parts), figures


def write_report(path: Path, plots_dir: Path | None = None, **kwargs: Any) -> Path:
    """Render the report (see `render_report`), write it atomically and its figures as PNGs in `plots_dir`."""
    page, figures = render_report(**kwargs)
    if plots_dir is not None:
        for stale in Path(plots_dir).glob("*.png"):  # a figure this run does not draw must not linger
            if stale.stem not in figures:
                stale.unlink()
        for name, png in figures.items():
            write_with(Path(plots_dir) / f"{name}.png", lambda p, png=png: p.write_bytes(png))
    return write_text(path, page)
