"""Grid helpers of the phantoms and their lesions: smooth random fields, rotations, trilinear
resizing, and coarse-to-fine sampling.

Speed: all of a phantom's geometry (affine, elastic, mass effect, bias field) is evaluated on a
coarse grid (~5 mm) and interpolated trilinearly (:func:`densify`), then each output voxel is
sampled once with :func:`torch.nn.functional.grid_sample` (:func:`sample_volume`), restricted to
the bounding box of the head (:func:`coarse_bbox`, :func:`fine_box`).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi


def smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Gaussian-smoothed white noise with unit standard deviation, float32."""
    n = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma, mode="wrap")
    return (n / (n.std() + 1e-6)).astype(np.float32)


def upsample(a: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Trilinear resize of a (X, Y, Z) float32 array to ``shape`` (corner-aligned)."""
    t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None, None]
    return F.interpolate(t, size=shape, mode="trilinear", align_corners=True)[0, 0].numpy()


def rotation_matrix(deg: np.ndarray) -> np.ndarray:
    """(3, 3) rotation matrix from angles in degrees about x, y, z."""
    ax, ay, az = np.deg2rad(deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def coarse_axes(shape: tuple[int, int, int], step: int) -> list[np.ndarray]:
    """Voxel indices of the coarse grid along each axis (0, step, ...; last one >= n - 1)."""
    return [np.arange(int(np.ceil((n - 1) / step)) + 1, dtype=np.float32) * step for n in shape]


def to_grid_coords(mm: np.ndarray, inv_affine: np.ndarray, dims: tuple[int, ...]) -> np.ndarray:
    """(..., 3) mm -> (..., 3) normalised grid_sample coordinates, ordered (z, y, x)."""
    vox = mm @ inv_affine[:3, :3].T + inv_affine[:3, 3]
    norm = 2.0 * vox / (np.asarray(dims, dtype=np.float64) - 1.0) - 1.0
    return norm[..., ::-1].astype(np.float32)


def coarse_bbox(inside: np.ndarray) -> tuple[slice, slice, slice] | None:
    """Coarse-index box of the True cells of a (cx, cy, cz) mask, grown by one cell."""
    idx = np.argwhere(inside)
    if idx.size == 0:
        return None
    lo = np.maximum(idx.min(0) - 1, 0)
    hi = np.minimum(idx.max(0) + 2, inside.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))


def _hat_matrix(fine: slice, step: int, n_coarse: int) -> torch.Tensor:
    """(n_fine, n_coarse) linear-interpolation weights from a coarse axis onto fine voxels."""
    pos = np.arange(fine.start, fine.stop, dtype=np.float32)[:, None] / step
    w = np.clip(1.0 - np.abs(pos - np.arange(n_coarse, dtype=np.float32)[None, :]), 0.0, None)
    return torch.from_numpy(w)


def densify(coarse: np.ndarray, out: tuple[slice, slice, slice], step: int) -> torch.Tensor:
    """Trilinear upsampling of coarse fields onto a block of output voxels.

    Done as three small matrix products (separable hat weights), much faster than
    ``F.interpolate`` here and directly in the channels-last layout ``grid_sample`` wants.

    Args:
        coarse: (cx, cy, cz, K) fields on the coarse grid (voxel ``i * step``).
        out: output-voxel slices of the block.
        step: coarse step in output voxels.

    Returns:
        (x, y, z, K) float32 contiguous tensor.
    """
    cx, cy, cz, k = coarse.shape
    ux, uy, uz = (_hat_matrix(o, step, n) for o, n in zip(out, (cx, cy, cz), strict=True))
    t = torch.from_numpy(np.ascontiguousarray(coarse, dtype=np.float32))
    t = torch.einsum("zc,abcq->abzq", uz, t)
    t = torch.einsum("yb,abzq->ayzq", uy, t).reshape(cx, -1)
    return (ux @ t).reshape(ux.shape[0], uy.shape[0], uz.shape[0], k)


def fine_box(box: tuple[slice, ...], step: int, shape: tuple[int, ...]) -> tuple[slice, ...]:
    """Output-voxel slices covered by a coarse-index box."""
    return tuple(
        slice(s.start * step, min((s.stop - 1) * step + 1, n))
        for s, n in zip(box, shape, strict=True)
    )


def sample_volume(volume: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
    """Samples ``volume`` (1, C, X', Y', Z') at grid ``dense`` (x, y, z, >=3) -> (C, x, y, z)."""
    grid = dense[None, ..., :3]
    vals = F.grid_sample(volume, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return vals[0]
