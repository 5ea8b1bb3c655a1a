"""The networks TumorTrace knows: one ordered, torch-free table of names and display names.

Everything that names or orders networks reads this table: the registry
(:mod:`tumortrace.models` builds exactly these), the app's sidebar and pages, the figures and
tables, ``scripts/results_table.py`` and the benchmarks. Adding a network is one row here plus its
registered builder in :mod:`tumortrace.models`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Network:
    """One row of :data:`NETWORKS`.

    Attributes:
        name: registry name, also the weights' file stem (``weights/<name>.json``).
        display: the name people read (``"R(2+1)D-18"``).
        description: one line for pickers and model cards.
    """

    name: str
    display: str
    description: str


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
)
"""In display order (the seed paper's): columns, tabs, tables and the sidebar follow it.
:func:`tumortrace.models.list_models` gives the same names sorted alphabetically."""

_BY_NAME: dict[str, Network] = {n.name: n for n in NETWORKS}


def network_names() -> tuple[str, ...]:
    """The names of :data:`NETWORKS`, in display order: ``("r2plus1d", "mc3", "r3d")``."""
    return tuple(_BY_NAME)


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
