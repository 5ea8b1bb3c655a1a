"""Plotly charts for the app: class probabilities, confusion matrices, ROC and training curves.

No streamlit and no model code; every function takes plain numbers (a probability vector, a
benchmark record's lists) and returns a ``plotly.graph_objects.Figure``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from tumortrace.config import CLASSES
from tumortrace.errors import ConfigError
from tumortrace.viz import CLASS_NAMES

CLASS_COLORS: dict[str, str] = {"healthy": "#2e7d32", "lgg": "#f9a825", "hgg": "#c62828"}


def probability_figure(
    probs: Sequence[float], classes: Sequence[str] = CLASSES, height: int = 190
) -> go.Figure:
    """Horizontal bar chart of class probabilities (0-100 %), largest highlighted.

    Args:
        probs: (C,) probabilities summing to ~1, in ``classes`` order.
    """
    probs = [float(p) for p in probs]
    if len(probs) != len(classes):
        raise ConfigError(f"Got {len(probs)} probabilities for {len(classes)} classes {classes}.")
    best = int(np.argmax(probs))
    names = [CLASS_NAMES.get(c, c) for c in classes]
    colors = [CLASS_COLORS.get(c, "#607d8b") for c in classes]
    fig = go.Figure(
        go.Bar(
            x=[100 * p for p in probs],
            y=names,
            orientation="h",
            marker={
                "color": colors,
                "opacity": [1.0 if i == best else 0.45 for i in range(len(probs))],
            },
            text=[f"{100 * p:.1f} %" for p in probs],
            textposition="outside",
            cliponaxis=False,
            hovertemplate="%{y}: %{x:.1f} %<extra></extra>",
        )
    )
    fig.update_layout(
        height=height,
        margin={"l": 10, "r": 40, "t": 10, "b": 30},
        xaxis={"range": [0, 100], "title": "probability (%)", "ticksuffix": ""},
        yaxis={"autorange": "reversed"},
        showlegend=False,
    )
    return fig


def confusion_figure(
    confusion: Sequence[Sequence[int]], classes: Sequence[str] = CLASSES, title: str = ""
) -> go.Figure:
    """Confusion-matrix heat map: rows are true classes, columns predicted; counts and row %."""
    cm = np.asarray(confusion, dtype=np.float64)
    if cm.shape != (len(classes), len(classes)):
        raise ConfigError(f"Confusion matrix shape {cm.shape} does not match classes {classes}.")
    row_pct = 100 * cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    names = [CLASS_NAMES.get(c, c) for c in classes]
    text = [
        [f"{int(cm[i, j])}<br>({row_pct[i, j]:.0f} %)" for j in range(len(classes))]
        for i in range(len(classes))
    ]
    fig = go.Figure(
        go.Heatmap(
            z=row_pct,
            x=names,
            y=names,
            text=text,
            texttemplate="%{text}",
            colorscale="Blues",
            zmin=0,
            zmax=100,
            showscale=False,
            hovertemplate="true %{y}, predicted %{x}: %{text}<extra></extra>",
        )
    )
    fig.update_layout(
        title=title or None,
        height=300,
        margin={"l": 10, "r": 10, "t": 40 if title else 10, "b": 10},
        xaxis={"title": "predicted", "side": "bottom"},
        yaxis={"title": "true", "autorange": "reversed"},
    )
    return fig


def _roc_frame(
    fig: go.Figure, title: str, height: int, axes: tuple[str, str], legend: dict
) -> go.Figure:
    """The frame every ROC figure shares: the dotted chance diagonal, unit axes titled ``axes``
    (x, y), the title (none when empty), ``height`` pixels and the ``legend`` placement."""
    fig.add_trace(
        go.Scatter(
            x=[0, 1],
            y=[0, 1],
            mode="lines",
            line={"color": "grey", "dash": "dot", "width": 1},
            name="chance",
            hoverinfo="skip",
        )
    )
    fig.update_layout(
        title=title or None,
        height=height,
        margin={"l": 10, "r": 10, "t": 40 if title else 10, "b": 10},
        xaxis={"title": axes[0], "range": [0, 1]},
        yaxis={"title": axes[1], "range": [0, 1.02]},
        legend=legend,
    )
    return fig


def roc_figure(
    rocs: Sequence[Mapping[str, Mapping[str, Sequence[float]]]],
    classes: Sequence[str] = CLASSES,
    aucs: Mapping[str, float] | None = None,
    title: str = "",
) -> go.Figure:
    """One-vs-rest ROC curves, one colour per class, one line per fold.

    Args:
        rocs: per fold, ``{class: {"fpr": [...], "tpr": [...]}}``.
        aucs: optional ``{class: AUC}`` shown in the legend (e.g. the mean over folds).
    """
    fig = go.Figure()
    for cls in classes:
        for k, roc in enumerate(rocs):
            if cls not in roc:
                continue
            name = CLASS_NAMES.get(cls, cls)
            if aucs and cls in aucs:
                name += f" (AUC {aucs[cls]:.3f})"
            fig.add_trace(
                go.Scatter(
                    x=list(roc[cls]["fpr"]),
                    y=list(roc[cls]["tpr"]),
                    mode="lines",
                    line={"color": CLASS_COLORS.get(cls), "width": 2},
                    opacity=1.0 if len(rocs) == 1 else 0.6,
                    name=name,
                    legendgroup=cls,
                    showlegend=k == 0,
                    hovertemplate=f"{cls} fold {k}: FPR %{{x:.2f}}, TPR %{{y:.2f}}<extra></extra>",
                )
            )
    return _roc_frame(
        fig,
        title,
        height=320,
        axes=("false positive rate", "true positive rate"),
        legend={"orientation": "h", "y": -0.25},
    )


METHOD_COLORS: tuple[str, ...] = (
    "#1565c0", "#ef6c00", "#2e7d32", "#6a1b9a", "#c62828", "#00838f", "#8d6e63", "#ad1457",
    "#9e9d24", "#546e7a",
)  # fmt: skip
"""One colour per method in the comparison figure (cycled beyond ten)."""


def comparison_roc_figure(
    rocs: Mapping[str, tuple[Sequence[float], Sequence[float], float]],
    names: Mapping[str, str] | None = None,
    highlight: Sequence[str] = (),
    title: str = "",
) -> go.Figure:
    """One ROC curve per method (tumour against healthy), the AUC in the legend.

    Args:
        rocs: ``{method: (fpr, tpr, auc)}`` in the order shown.
        names: display names (default: the keys).
        highlight: methods drawn solid and wider (the networks); the others dashed.
    """
    fig = go.Figure()
    for k, (method, (fpr, tpr, auc)) in enumerate(rocs.items()):
        strong = method in highlight
        fig.add_trace(
            go.Scatter(
                x=list(fpr),
                y=list(tpr),
                mode="lines",
                line={
                    "color": METHOD_COLORS[k % len(METHOD_COLORS)],
                    "width": 2.5 if strong else 1.5,
                    "dash": "solid" if strong else "dash",
                },
                name=f"{(names or {}).get(method, method)} (AUC {auc:.3f})",
                hovertemplate=f"{method}: FPR %{{x:.2f}}, TPR %{{y:.2f}}<extra></extra>",
            )
        )
    return _roc_frame(
        fig,
        title,
        height=420,
        axes=(
            "false positive rate (healthy called tumour)",
            "true positive rate (tumour called tumour)",
        ),
        legend={"orientation": "v", "x": 1.02, "y": 1},
    )


FOLD_COLORS: tuple[str, ...] = ("#1565c0", "#ef6c00", "#2e7d32", "#6a1b9a", "#c62828", "#00838f")
"""One colour per fold (cycled beyond six), so the folds of a training run can be told apart."""

CURVES: dict[str, tuple[int, str, str]] = {
    "train_loss": (1, "train loss", "solid"),
    "val_loss": (1, "val loss", "dash"),
    "val_accuracy": (2, "val accuracy", "solid"),
    "val_macro_f1": (2, "val macro-F1", "dot"),
}
"""Curve key -> (chart 1 = loss or 2 = validation score, legend label, line dash)."""


def training_curves_figure(
    curves_per_fold: Sequence[Sequence[Mapping[str, float]]], title: str = ""
) -> go.Figure:
    """Losses (left) and validation accuracy / macro-F1 (right) per epoch, one colour per fold.

    Each chart has its own legend directly below it (``legend`` for the losses, ``legend2`` for
    the scores); the line dash tells the curves of one fold apart.

    Args:
        curves_per_fold: per fold, a list of ``{"epoch", "train_loss", "val_loss", "val_accuracy",
            "val_macro_f1"}`` rows (missing keys are skipped).
    """
    fig = make_subplots(
        rows=1, cols=2, subplot_titles=("loss", "validation score"), horizontal_spacing=0.12
    )
    for k, curves in enumerate(curves_per_fold):
        epochs = [row.get("epoch", i) for i, row in enumerate(curves)]
        color = FOLD_COLORS[k % len(FOLD_COLORS)]
        for key, (col, label, dash) in CURVES.items():
            ys = [row.get(key) for row in curves]
            if all(y is None for y in ys):
                continue
            fig.add_trace(
                go.Scatter(
                    x=epochs,
                    y=ys,
                    mode="lines",
                    line={"color": color, "dash": dash, "width": 1.5},
                    opacity=0.85,
                    name=f"fold {k} {label}",
                    legend="legend" if col == 1 else "legend2",
                    hovertemplate=f"fold {k} {label} epoch %{{x}}: %{{y:.3f}}<extra></extra>",
                ),
                row=1,
                col=col,
            )
    n_rows = max(1, len(curves_per_fold)) * 2  # legend entries per chart
    below = {"orientation": "v", "yanchor": "top", "y": -0.22, "xanchor": "left"}
    fig.update_xaxes(title_text="epoch")
    fig.update_yaxes(range=[0, 1.02], row=1, col=2)
    fig.update_layout(
        title=title or None,
        height=300 + 20 * n_rows,
        margin={"l": 10, "r": 10, "t": 50, "b": 20 * n_rows + 10},
        legend={**below, "x": 0.0},
        legend2={**below, "x": 0.56},
    )
    return fig
