"""The methods TumorTrace knows: one ordered, torch-free table of names, display names and kinds.

Everything that names or orders methods reads this table: the registry
(:mod:`tumortrace.models` builds exactly these), the app's sidebar and pages, the figures and
tables, ``scripts/results_table.py`` and the benchmarks. Adding a method is one row here plus its
registered builder in :mod:`tumortrace.models`.

Two kinds: ``"network"``, the three video ResNets the app serves and explains (the Analyze page
and the sidebar read :func:`network_names`), and ``"baseline"``, the simpler methods the seed
papers compare against (:mod:`tumortrace.baselines`), reached by ``train.py``, ``evaluate`` and
``predict`` like the networks and shown on the Benchmarks page after them (:func:`method_names`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

Kind = Literal["network", "baseline"]


@dataclass(frozen=True)
class Network:
    """One row of :data:`NETWORKS`.

    Attributes:
        name: registry name, also the weights' file stem (``weights/<name>.json``).
        display: the name people read (``"R(2+1)D-18"``).
        description: one line for pickers and model cards.
        kind: ``"network"`` (served by the app, explained with Grad-CAM) or ``"baseline"`` (a
            comparison method: trained, scored and benchmarked, never on the Analyze page).
    """

    name: str
    display: str
    description: str
    kind: Kind = "network"


NETWORKS: tuple[Network, ...] = (
    Network(
        "r2plus1d",
        "R(2+1)D-18",
        "R(2+1)D-18: each 3D convolution split into spatial (1,3,3) + temporal (3,1,1)",
    ),
    Network(
        "mc3",
        "MC3-18",
        "MC3-18: full 3D convolutions in the stem and layer1, 2D (1,3,3) ones after",
    ),
    Network("r3d", "R3D-18", "R3D-18: full (3,3,3) convolutions throughout"),
    Network(
        "hog_svm",
        "HOG + PCA + SVM",
        "HOG of every axial slice, PCA, RBF support vector machines (one per class)",
        "baseline",
    ),
    Network(
        "cnn_lstm",
        "CNN-LSTM",
        "a small 2D CNN encodes each axial slice; an LSTM reads the slices in order",
        "baseline",
    ),
    Network(
        "conv_ae",
        "Conv. autoencoder + MLP",
        "a 3D convolutional autoencoder trained to reconstruct; a small classifier on its code",
        "baseline",
    ),
    Network(
        "cnn3d_small",
        "Small 3D CNN",
        "four 3D convolution blocks (16-32-64-128 channels), about 0.3 M weights",
        "baseline",
    ),
    Network(
        "resnet18_2d",
        "ResNet-18 2D (slices)",
        "torchvision ResNet-18 on every axial slice; slice features averaged per volume",
        "baseline",
    ),
    Network(
        "googlenet_2d",
        "GoogLeNet 2D (slices)",
        "torchvision GoogLeNet on every axial slice; slice features averaged per volume",
        "baseline",
    ),
)
"""In display order: the three networks (the seed paper's order) first, then the baselines.
Columns, tabs, tables and the sidebar follow it. :func:`tumortrace.models.list_models` gives the
networks' names sorted alphabetically, :func:`tumortrace.models.list_methods` every name."""

_BY_NAME: dict[str, Network] = {n.name: n for n in NETWORKS}


def network_names() -> tuple[str, ...]:
    """The names of the ``"network"`` rows, in display order: ``("r2plus1d", "mc3", "r3d")``."""
    return tuple(n.name for n in NETWORKS if n.kind == "network")


def baseline_names() -> tuple[str, ...]:
    """The names of the ``"baseline"`` rows, in display order."""
    return tuple(n.name for n in NETWORKS if n.kind == "baseline")


def method_names() -> tuple[str, ...]:
    """Every row's name, in display order: the networks, then the baselines."""
    return tuple(_BY_NAME)


def is_baseline(name: str) -> bool:
    """True for a ``"baseline"`` row; False for a network or an unknown name."""
    row = _BY_NAME.get(name)
    return row is not None and row.kind == "baseline"


def get_network(name: str) -> Network | None:
    """The row for ``name``, or None when the table has no such network."""
    return _BY_NAME.get(name)


def display_name(name: str) -> str:
    """``"R(2+1)D-18"`` for ``"r2plus1d"``; an unknown name is returned as given."""
    row = _BY_NAME.get(name)
    return name if row is None else row.display


def in_display_order(names: Iterable[str]) -> list[str]:
    """``names`` (each once) in table order; names the table lacks follow in their given order."""
    names = list(dict.fromkeys(names))
    known = [n for n in _BY_NAME if n in names]
    return known + [n for n in names if n not in _BY_NAME]
