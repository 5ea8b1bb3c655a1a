"""Otsu's threshold and the largest component: the one split of tissue from background, torch-free.

Used by preprocessing (:func:`tumortrace.preprocess.foreground_mask`), brain extraction
(:func:`tumortrace.brain.extract_brain`) and the display
(:func:`tumortrace.viz.window_presets`, the viewer's "inside the head"), so both cut at the same
intensity. Kept apart from :mod:`tumortrace.preprocess` because the display must not import torch.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of a sample (maximises the between-class variance).

    Args:
        values: intensities, any shape (flattened); at least one value.
        bins: histogram bins.

    Returns:
        The centre of the histogram bin that best splits the sample in two (never the last bin,
        which would leave the upper class empty).
    """
    hist, edges = np.histogram(np.asarray(values).ravel(), bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist).astype(np.float64)
    w1 = w0[-1] - w0
    m = np.cumsum(hist * centres)
    mu0 = m / np.maximum(w0, 1)
    mu1 = (m[-1] - m) / np.maximum(w1, 1)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(centres[int(np.argmax(between[:-1]))])


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest connected component (6-connectivity) of a bool mask; the mask itself when it
    has at most one component."""
    labels, n = ndimage.label(mask)
    if n <= 1:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))
