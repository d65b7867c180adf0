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

from medsegllm.common.io import write_text

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1100px}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
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


def _table(frame: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(v)}</td>" for v in row) + "</tr>" for row in frame.itertuples(index=False))
    return f"<table><tr>{head}</tr>{body}</table>"


def _pyplot():
    """pyplot on the file-only Agg backend: reports are rendered on headless workers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    _pyplot().close(fig)
    return f'<img alt="figure" src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">'


def _figure(width: float, height: float):
    return _pyplot().subplots(figsize=(width, height))


def _js_chart(metrics: dict[str, float]) -> str:
    fig, ax = _figure(5, 3)
    names = ["js_intensity_raw", "js_intensity_harmonized", "js_features"]
    values = [metrics.get(n, float("nan")) for n in names]
    ax.bar(["intensity\nraw", "intensity\nharmonized", "model\nfeatures"], np.nan_to_num(values), color=["#999", "#4a90d9", "#e07b39"])
    ax.set_ylabel("mean pairwise JS (bits)")
    ax.set_title("Cross-device divergence (within modality)")
    return _png(fig)


def _overlay(cases: list[Case], class_names: tuple[str, ...]) -> str:
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


def _training_curve(train_log: pd.DataFrame) -> str:
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
    return pd.DataFrame(rows, columns=["quantity", "value"])


def render_report(
    metrics: dict[str, float],
    per_device: pd.DataFrame,
    per_modality: pd.DataFrame,
    gate: dict[str, Any],
    cases: list[Case],
    class_names: tuple[str, ...],
    pseudo_summary: dict[str, Any] | None = None,
    train_log: pd.DataFrame | None = None,
) -> str:
    """The whole report as one HTML string."""
    verdict = '<span class="pass">PASSED</span>' if gate["passed"] else '<span class="fail">FAILED</span>'
    gate_rows = "".join(
        f"<tr><td>{html.escape(c['name'])}</td><td>{_fmt(c['value'])}</td><td>{html.escape(c['op'])} {_fmt(c['threshold'])}</td>"
        f"<td class=\"{'pass' if c['passed'] else 'fail'}\">{'pass' if c['passed'] else 'fail'}</td></tr>"
        for c in gate["checks"]
    )
    headline = pd.DataFrame([(k, metrics[k]) for k in sorted(metrics)], columns=["metric", "value"])
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>MedSegLLM validation</title><style>{_CSS}</style></head><body>",
        f"<h1>MedSegLLM validation report</h1><p>Gate verdict: {verdict}</p>",
        "<h2>Gates</h2><table><tr><th>check</th><th>value</th><th>threshold</th><th>result</th></tr>" + gate_rows + "</table>",
        "<h2>Dice per device</h2><p class='note'>95% bootstrap CI over series; holdout = device never seen in training.</p>",
        _table(per_device),
        "<h2>Dice per modality</h2>",
        _table(per_modality),
        "<h2>Cross-device divergence</h2>",
        _js_chart(metrics),
    ]
    if cases:
        parts += ["<h2>Best and worst validation case</h2><p class='note'>Middle lesion slice (else the slice with most foreground).</p>", _overlay(cases, class_names)]
    if pseudo_summary:
        parts += ["<h2>Pseudo-label quality</h2>", _table(_scalars(pseudo_summary))]
    if train_log is not None and not train_log.empty:
        parts += ["<h2>Training curve</h2>", _training_curve(train_log)]
    parts += ["<h2>All metrics</h2>", _table(headline), "</body></html>"]
    return "\n".join(parts)


def write_report(path: Path, **kwargs: Any) -> Path:
    """Render the report (see `render_report`) and write it atomically."""
    return write_text(path, render_report(**kwargs))
