"""The comparison methods: what the seed papers' networks are measured against, as torch modules.

Every baseline takes the networks' input, ``volume: (N, 1, D, H, W) float32`` (D = z, the axial
slices; H = y; W = x), and returns ``logits: (N, num_classes)``, so the training loop, the
checkpoint files, ``evaluate`` and ``predict`` treat it like a network. Each starts with
``stem = nn.Identity()`` on the whole volume, where
:func:`tumortrace.models.set_input_reference` hangs the input reference
(``--healthy-reference``), as in the networks. Nothing is pretrained: no weights can be downloaded
here, so every 2D torchvision trunk starts from random initialisation.

* :class:`HogSvm`: HOG of every axial slice -> PCA -> standardisation -> one RBF support vector
  machine per class (one against the rest) -> decision values / temperature. Fitted with
  scikit-learn by :mod:`tumortrace.classical`; stored as plain arrays (buffers), so it needs no
  pickle and predicts with torch alone.
* :class:`CnnLstm`: a small 2D CNN encodes each axial slice, a bidirectional LSTM reads them in
  order (the seed paper's "RNN-LSTM").
* :class:`ConvAutoencoder`: a 3D convolutional autoencoder, first trained to reconstruct
  (:func:`tumortrace.loop.pretrain_autoencoder`), then frozen; a small classifier on its code.
* :class:`Cnn3dSmall`: four 3D convolution blocks (the milestone's compact custom 3D CNN).
* :class:`SliceNet2d`: torchvision's ResNet-18 or GoogLeNet on every axial slice, the slices'
  features averaged per volume, then one linear head.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn
from torch.nn import functional as F
from torchvision.models import googlenet, resnet18

HOG_ORIENTATIONS = 9
"""Unsigned gradient orientation bins over [0, 180) degrees (Dalal and Triggs)."""
HOG_CELL = 4
"""Cell side in voxels (20 mm at the networks' 5 mm grid)."""
HOG_BLOCK = 2
"""Block side in cells; each block is L2-Hys normalised (clipped at 0.2)."""


def _head(features: int, num_classes: int, dropout: float) -> nn.Sequential:
    """``fc``: dropout + linear, the networks' head."""
    return nn.Sequential(nn.Dropout(p=float(dropout)), nn.Linear(features, num_classes))


def _slices(x: torch.Tensor) -> torch.Tensor:
    """``(N, 1, D, H, W)`` -> ``(N * D, 1, H, W)``: every axial slice as one 2D image."""
    n, c, d, h, w = x.shape
    return x.permute(0, 2, 1, 3, 4).reshape(n * d, c, h, w)


# --------------------------------------------------------------------------- HOG + PCA + SVM


def hog_slices(x: torch.Tensor) -> torch.Tensor:
    """Histograms of oriented gradients of every axial slice, as one vector per volume.

    skimage's ``hog`` (``orientations=9``, ``pixels_per_cell=4``, ``cells_per_block=2``,
    ``L2-Hys``) re-written in torch, so the same code runs at fitting and at inference: central
    differences (zero on the border), unsigned orientation split linearly between the two nearest
    bins, magnitude-weighted, averaged per cell; blocks of 2x2 cells (fewer when the slice has
    fewer cells) normalised, clipped at 0.2 and normalised again.

    Args:
        x: ``(N, 1, D, H, W)`` float32.

    Returns:
        ``(N, F)`` float32, ``F = D * blocks * block_cells * orientations``.
    """
    n = x.shape[0]
    s = _slices(x.float())[:, 0]  # (M, H, W)
    gx = torch.zeros_like(s)
    gy = torch.zeros_like(s)
    gx[:, :, 1:-1] = s[:, :, 2:] - s[:, :, :-2]
    gy[:, 1:-1, :] = s[:, 2:, :] - s[:, :-2, :]
    mag = torch.sqrt(gx * gx + gy * gy)
    ang = torch.remainder(torch.atan2(gy, gx), math.pi)
    pos = ang / (math.pi / HOG_ORIENTATIONS) - 0.5
    lower = torch.floor(pos)
    frac = pos - lower
    lower = torch.remainder(lower, HOG_ORIENTATIONS).long()
    upper = torch.remainder(lower + 1, HOG_ORIENTATIONS)
    hist = torch.zeros(s.shape[0], HOG_ORIENTATIONS, *s.shape[1:], dtype=s.dtype, device=s.device)
    hist.scatter_add_(1, lower[:, None], (mag * (1 - frac))[:, None])
    hist.scatter_add_(1, upper[:, None], (mag * frac)[:, None])
    cell = min(HOG_CELL, s.shape[1], s.shape[2])
    cells = F.avg_pool2d(hist, cell)  # (M, O, Hc, Wc)
    bh, bw = min(HOG_BLOCK, cells.shape[2]), min(HOG_BLOCK, cells.shape[3])
    blocks = F.unfold(cells, (bh, bw))  # (M, O * bh * bw, n_blocks)
    eps = 1e-5
    blocks = blocks / torch.sqrt((blocks**2).sum(1, keepdim=True) + eps**2)
    blocks = blocks.clamp(max=0.2)
    blocks = blocks / torch.sqrt((blocks**2).sum(1, keepdim=True) + eps**2)
    return blocks.transpose(1, 2).reshape(n, -1)


SVM_KEYS = ("pca_mean", "pca_components", "scale_mean", "scale_std", "intercept")
"""The HOG-SVM buffers besides the per-class ``support_<c>`` and ``dual_<c>``."""


class HogSvm(nn.Module):
    """HOG + PCA + one-against-the-rest RBF SVMs, as fixed arrays.

    ``logits[:, c] = (sum_i dual_c[i] * exp(-gamma * |z - support_c[i]|^2) + intercept[c]) / T``
    with ``z = ((hog(x) - pca_mean) @ pca_components.T - scale_mean) / scale_std``; softmax of these
    logits are the probabilities (``T``, ``temperature``, fitted on the validation part). Empty
    until :mod:`tumortrace.classical` fills it or :meth:`adopt_shapes` sizes it for a stored state.
    """

    def __init__(self, num_classes: int = 3, dropout: float = 0.0) -> None:
        super().__init__()
        del dropout  # no dropout in an SVM; accepted so every builder takes the same arguments
        self.num_classes = num_classes
        self.stem = nn.Identity()
        for key in SVM_KEYS:
            self.register_buffer(key, torch.zeros(0))
        for c in range(num_classes):
            self.register_buffer(f"support_{c}", torch.zeros(0, 0))
            self.register_buffer(f"dual_{c}", torch.zeros(0))
        self.register_buffer("gamma", torch.ones(()))
        self.register_buffer("temperature", torch.ones(()))

    def adopt_shapes(self, state: Mapping[str, torch.Tensor]) -> None:
        """Resizes every buffer to the shape ``state`` holds, so ``load_state_dict`` fits."""
        for key, buf in list(self._buffers.items()):
            if key in state and buf is not None and tuple(buf.shape) != tuple(state[key].shape):
                self._buffers[key] = torch.zeros(state[key].shape, dtype=buf.dtype)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 1, D, H, W)`` -> the HOG vectors ``(N, F)`` (after the input reference)."""
        return hog_slices(self.stem(x))

    def project(self, feats: torch.Tensor) -> torch.Tensor:
        """HOG ``(N, F)`` -> standardised principal components ``(N, K)``."""
        z = (feats.double() - self.pca_mean.double()) @ self.pca_components.double().T
        return (z - self.scale_mean.double()) / self.scale_std.double()

    def decision(self, z: torch.Tensor) -> torch.Tensor:
        """Standardised components ``(N, K)`` -> SVM decision values ``(N, C)``, float64."""
        cols = []
        for c in range(self.num_classes):
            sv = getattr(self, f"support_{c}").double()
            kernel = torch.exp(-self.gamma.double() * torch.cdist(z, sv).pow(2))
            cols.append(kernel @ getattr(self, f"dual_{c}").double() + self.intercept[c].double())
        return torch.stack(cols, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 1, D, H, W)`` -> logits ``(N, C)`` (decision values / temperature), float32."""
        logits = self.decision(self.project(self.features(x))) / self.temperature.double()
        return logits.to(torch.float32)


# --------------------------------------------------------------------------- neural baselines


_LAYERS = {
    2: (nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d),
    3: (nn.Conv3d, nn.BatchNorm3d, nn.MaxPool3d),
}
"""The convolution, normalisation and pooling layers of 2D and 3D blocks."""


def _conv_block(cin: int, cout: int, dims: int) -> nn.Sequential:
    """3-wide convolution (no bias), batch norm, ReLU and 2x max pooling in ``dims`` (2 or 3)
    dimensions: ``(N, cin, *S) -> (N, cout, *ceil(S / 2))``."""
    conv, norm, pool = _LAYERS[dims]
    return nn.Sequential(
        conv(cin, cout, 3, padding=1, bias=False),
        norm(cout),
        nn.ReLU(inplace=True),
        pool(2, ceil_mode=True),
    )


class CnnLstm(nn.Module):
    """Slice encoder (three 2D conv blocks, 16-32-64 channels, pooled) + bidirectional LSTM.

    The LSTM reads the D axial slices from inferior to superior (and back); its two final hidden
    states (2 x 64) feed the head.
    """

    def __init__(self, num_classes: int = 3, dropout: float = 0.3, hidden: int = 64) -> None:
        super().__init__()
        self.stem = nn.Identity()
        self.encoder = nn.Sequential(
            _conv_block(1, 16, 2),
            _conv_block(16, 32, 2),
            _conv_block(32, 64, 2),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.lstm = nn.LSTM(64, hidden, batch_first=True, bidirectional=True)
        self.fc = _head(2 * hidden, num_classes, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 1, D, H, W)`` -> logits ``(N, C)``."""
        x = self.stem(x)
        n, d = x.shape[0], x.shape[2]
        feats = self.encoder(_slices(x)).view(n, d, -1)  # (N, D, 64)
        _, (h, _) = self.lstm(feats)  # h: (2, N, hidden)
        return self.fc(torch.cat([h[0], h[1]], dim=1))


class ConvAutoencoder(nn.Module):
    """3D convolutional autoencoder (8-16-32 channels, three stride-2 stages) + a small classifier.

    :meth:`reconstruct` is what :func:`tumortrace.loop.pretrain_autoencoder` trains (mean squared
    error against the input); :meth:`freeze_encoder` then fixes the encoder (weights and
    BatchNorm statistics) and the classifier (the code pooled to 2x2x2, 256 -> 64 -> C) is trained
    by the ordinary loop.
    """

    def __init__(self, num_classes: int = 3, dropout: float = 0.3) -> None:
        super().__init__()
        self.stem = nn.Identity()

        def down(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv3d(cin, cout, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm3d(cout),
                nn.ReLU(inplace=True),
            )

        def up(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.ConvTranspose3d(cin, cout, 4, stride=2, padding=1, bias=False),
                nn.BatchNorm3d(cout),
                nn.ReLU(inplace=True),
            )

        self.encoder = nn.Sequential(down(1, 8), down(8, 16), down(16, 32))
        self.decoder = nn.Sequential(up(32, 16), up(16, 8), nn.ConvTranspose3d(8, 1, 4, 2, 1))
        self.classifier = nn.Sequential(
            nn.AdaptiveAvgPool3d(2), nn.Flatten(), nn.Linear(256, 64), nn.ReLU(inplace=True)
        )
        self.fc = _head(64, num_classes, dropout)
        self._frozen = False

    def reconstruct(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(target, reconstruction)``, both ``(N, 1, D, H, W)``: the input after the stem and the
        decoder's output resampled to its grid."""
        target = self.stem(x)
        out = self.decoder(self.encoder(target))
        return target, F.interpolate(out, size=target.shape[-3:], mode="trilinear")

    def freeze_encoder(self) -> None:
        """Fixes the encoder: no gradients, BatchNorm statistics kept (eval mode) from now on."""
        self._frozen = True
        self.encoder.requires_grad_(False)
        self.encoder.eval()

    def train(self, mode: bool = True) -> ConvAutoencoder:
        super().train(mode)
        if self._frozen:
            self.encoder.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 1, D, H, W)`` -> logits ``(N, C)``."""
        return self.fc(self.classifier(self.encoder(self.stem(x))))


class Cnn3dSmall(nn.Module):
    """Four 3D conv blocks (16-32-64-128 channels, each conv, BatchNorm, ReLU, max-pool), pooled."""

    def __init__(self, num_classes: int = 3, dropout: float = 0.3) -> None:
        super().__init__()
        self.stem = nn.Identity()
        self.features = nn.Sequential(
            _conv_block(1, 16, 3),
            _conv_block(16, 32, 3),
            _conv_block(32, 64, 3),
            _conv_block(64, 128, 3),
            nn.AdaptiveAvgPool3d(1),
            nn.Flatten(),
        )
        self.fc = _head(128, num_classes, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 1, D, H, W)`` -> logits ``(N, C)``."""
        return self.fc(self.features(self.stem(x)))


class SliceNet2d(nn.Module):
    """A torchvision 2D trunk (``"resnet18"`` or ``"googlenet"``, 1-channel first convolution,
    random initialisation) on every axial slice; slice features averaged per volume; ``fc``."""

    def __init__(self, trunk: str, num_classes: int = 3, dropout: float = 0.3) -> None:
        super().__init__()
        self.stem = nn.Identity()
        if trunk == "resnet18":
            net = resnet18(weights=None)
            net.conv1 = nn.Conv2d(1, 64, 7, stride=2, padding=3, bias=False)
            nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
            width = net.fc.in_features
        elif trunk == "googlenet":
            net = googlenet(weights=None, aux_logits=False, init_weights=True)
            net.conv1.conv = nn.Conv2d(1, 64, 7, stride=2, padding=3, bias=False)
            nn.init.trunc_normal_(net.conv1.conv.weight, std=0.01, a=-2, b=2)
            net.dropout = nn.Identity()  # the head's own dropout below
            width = net.fc.in_features
        else:
            raise ValueError(f"Unknown 2D trunk {trunk!r}; expected 'resnet18' or 'googlenet'.")
        net.fc = nn.Identity()
        self.trunk = net
        self.fc = _head(width, num_classes, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 1, D, H, W)`` -> logits ``(N, C)``."""
        x = self.stem(x)
        n, d = x.shape[0], x.shape[2]
        feats = self.trunk(_slices(x)).view(n, d, -1)
        return self.fc(feats.mean(dim=1))
