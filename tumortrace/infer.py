"""Predictor: weights cards + preprocessing -> per-network Prediction and Explanation + ensemble.

One analysis of a volume runs, per network, ONE forward pass whose output gives both the
probabilities and the activations the map needs, and ONE backward pass (through the stages after
the first one the map reads only, which is all the map needs; see :mod:`tumortrace.explain`). The
map is restricted to the brain on the model grid (``Preprocessed.brain`` from the standard-space
pipeline, else :func:`tumortrace.explain.brain_mask_on_model_grid`).

Speed on CPU (measured with ``benchmarks/bench_infer.py``; see :class:`InferenceSettings`):
BatchNorm folded into the preceding convolutions, channels_last_3d tensors, bf16 trunk weights where
the CPU supports bf16 natively (AMX / AVX-512 BF16), ``torch.inference_mode`` for the trunk, and
optionally ``torch.compile`` (:attr:`InferenceSettings.compile`). The settings record and the
preparation of each network (:func:`prepare_model`) live in :mod:`tumortrace.model_prep`
(``InferenceSettings`` is imported here too, as :class:`Predictor`'s settings).

Sharing: models are loaded once, prepared once in :class:`Predictor`'s constructor, and only read
afterwards (no hooks, no flag changes, no caches), so one :class:`Predictor` can serve concurrent
:meth:`Predictor.analyze` calls from several threads (e.g. Streamlit sessions).

:meth:`Analysis.to_dict` is the one report schema; the batch command line (files in, one row
each, CSV or JSON out) is :mod:`tumortrace.batch`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tumortrace.checkpoint import ModelCard, load_checkpoint, read_card
from tumortrace.config import CLASSES, PreprocessConfig
from tumortrace.errors import CheckpointError, ConfigError, TumorTraceError
from tumortrace.explain import (
    brain_mask_on_model_grid,
    explain_batch,
    finish_map,
    fuse_maps,
    make_explanation,
    score_maps,
    tumour_log_odds,
)
from tumortrace.explanation import Explanation, get_cam_method, save_cam_nifti
from tumortrace.focus import Focus, find_focus
from tumortrace.guards import printable
from tumortrace.io import Volume
from tumortrace.model_prep import InferenceSettings, prepare_model
from tumortrace.models import is_baseline, list_methods
from tumortrace.preprocess import GridMap, Preprocessed
from tumortrace.stages import Trunk
from tumortrace.standard import PIPELINE_VERSION, StandardSpace, prepare, standardise

__all__ = [
    "Analysis",
    "Explanation",
    "InferenceSettings",
    "Prediction",
    "Predictor",
    "save_cam_nifti",
]


@dataclass(frozen=True)
class Prediction:
    """One network's verdict on one volume.

    Attributes:
        arch: network name.
        probs: ``(3,)`` float64 softmax probabilities in :data:`CLASSES` order (sum 1).
        label: the most probable class.
        seconds: wall time of this network's forward pass and maps, the focus's map of the
            tumour log-odds included (preprocessing excluded).
    """

    arch: str
    probs: np.ndarray
    label: str
    seconds: float


@dataclass(frozen=True)
class Analysis:
    """Every network's prediction and explanation for one volume, and their ensemble.

    Attributes:
        predictions: ``{arch: Prediction}`` in the order analysed.
        explanations: ``{arch: Explanation}`` (Grad-CAM on the model and the volume grid).
        ensemble_probs: ``(3,)`` mean of the networks' probabilities.
        ensemble_label: the most probable class of the ensemble.
        agree: every network predicts the same label.
        grid: the model-grid -> volume-grid map of the first network (each explanation carries its
            own ``grid`` when cards use different preprocessing).
        seconds: wall time of the whole analysis, preprocessing included.
        standard: brain mask, registration and input checks (None when they were not run).
        focus: where the networks' pooled evidence for a tumour concentrates
            (:mod:`tumortrace.focus`: the viewer opens there), or None without networks.
    """

    predictions: dict[str, Prediction]
    explanations: dict[str, Explanation]
    ensemble_probs: np.ndarray
    ensemble_label: str
    agree: bool
    grid: GridMap
    seconds: float = 0.0
    standard: StandardSpace | None = None
    focus: Focus | None = None

    @property
    def reliable(self) -> bool:
        """False when an input check says no verdict should be read from this scan."""
        return self.standard is None or self.standard.reliable

    @property
    def verdict(self) -> str:
        """The ensemble label, or ``"unreliable input"`` when the input checks fail hard."""
        return self.ensemble_label if self.reliable else "unreliable input"

    def to_dict(self, cards: Mapping[str, ModelCard] | None = None) -> dict[str, Any]:
        """The one report schema, JSON-ready: the CLI's rows and the app's download both use it.

        ``{"label", "verdict", "probs": {class: p}, "agree", "qc", "networks": {arch: {"label",
        "probs", "seconds", "cam_target"}}}``, probabilities in :data:`CLASSES` order and
        networks in the order analysed; ``qc`` is :meth:`tumortrace.qc.QCReport.to_dict` or None
        when the input checks did not run.

        Args:
            cards: ``{arch: ModelCard}``; when given, each network also gets ``"weights"`` (arch,
                weights_sha256, date, git_commit, shipped of the card it ran with).
        """
        networks: dict[str, dict[str, Any]] = {}
        for arch, pred in self.predictions.items():
            expl = self.explanations.get(arch)
            networks[arch] = {
                "label": pred.label,
                "probs": {c: float(v) for c, v in zip(CLASSES, pred.probs, strict=True)},
                "seconds": round(pred.seconds, 4),
                "cam_target": None if expl is None else expl.target,
            }
            if cards is not None:
                card = cards.get(arch)
                networks[arch]["weights"] = {
                    k: getattr(card, k, None)
                    for k in ("arch", "weights_sha256", "date", "git_commit", "shipped")
                }
        return {
            "label": self.ensemble_label,
            "verdict": self.verdict,
            "probs": {c: float(p) for c, p in zip(CLASSES, self.ensemble_probs, strict=True)},
            "agree": self.agree,
            "qc": None if self.standard is None else self.standard.qc.to_dict(),
            "networks": networks,
        }


def _class_index(target: str | None) -> int | None:
    if target is None:
        return None
    if target not in CLASSES:
        raise ConfigError(f"Unknown target class {target!r}; expected one of {list(CLASSES)}.")
    return CLASSES.index(target)


class Predictor:
    """The networks of a weights folder, ready to analyse volumes.

    Attributes:
        archs: the loaded networks (and baselines), in :func:`tumortrace.models.list_methods`
            order. A baseline gets a prediction and no explanation.
        cards: ``{arch: ModelCard}``.
        settings: how the networks run.
    """

    def __init__(
        self,
        models: Mapping[str, nn.Module],
        cards: Mapping[str, ModelCard],
        settings: InferenceSettings | None = None,
    ) -> None:
        """Takes ownership of ``models`` and prepares them for inference (in place).

        Args:
            models: ``{arch: network}`` from ``create_model`` / ``load_checkpoint``; do not use them
                elsewhere afterwards (they are frozen, fused and re-laid out).
            cards: ``{arch: ModelCard}`` with the same keys.
            settings: see :class:`InferenceSettings`.

        Raises:
            CheckpointError: no models, keys differ, or a card does not match its network.
            ConfigError: unknown architecture, device or precision.
        """
        self.settings = settings or InferenceSettings()
        self.refused: dict[str, str] = {}
        """``{arch: reason}`` of networks :meth:`from_dir` left out (weights or card refused)."""
        if not models:
            raise CheckpointError("A Predictor needs at least one network; none was given.")
        if set(models) != set(cards):
            raise CheckpointError(
                f"Networks {sorted(models)} and model cards {sorted(cards)} do not match; "
                "give one card per network."
            )
        known = list_methods()
        for arch, card in cards.items():
            if arch not in known:
                raise ConfigError(f"Unknown architecture {arch!r}; expected one of {known}.")
            _check_card(arch, card, models[arch], source=f"card for {arch!r}")
        self.archs: list[str] = [a for a in known if a in models]
        self.cards: dict[str, ModelCard] = {a: cards[a] for a in self.archs}
        self._device = self.settings.resolved_device()
        self._dtype = self.settings.compute_dtype()
        self._models: dict[str, nn.Module] = {
            a: prepare_model(models[a], self.settings) for a in self.archs
        }
        self._trunks: dict[str, Callable[[torch.Tensor], torch.Tensor] | None] = {
            a: self._compile(a) if self.settings.compile and not is_baseline(a) else None
            for a in self.archs
        }

    def _compile(self, arch: str) -> Callable[[torch.Tensor], torch.Tensor]:
        """Compiles ``arch``'s trunk and warms it up at its card's model grid (batch 1)."""
        trunk = torch.compile(
            Trunk(self._models[arch], get_cam_method(self.settings.cam_method).layers[0]),
            options={"freezing": True},
        )
        x = torch.zeros((1, 1, *self.cards[arch].preprocess.shape_dhw), device=self._device)
        if self.settings.channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        try:
            with torch.inference_mode():
                trunk(x.to(self._dtype))
        except Exception as err:  # inductor raises many types (no compiler, unsupported op...)
            raise ConfigError(
                f"torch.compile failed for {arch!r}: {type(err).__name__}: {err}. "
                "Use InferenceSettings(compile=False) to run eagerly."
            ) from err
        return trunk

    @classmethod
    def from_dir(
        cls,
        weights_dir: str | Path = "weights",
        archs: Sequence[str] | None = None,
        settings: InferenceSettings | None = None,
    ) -> Predictor:
        """Loads ``<weights_dir>/<arch>.json`` (+ ``.safetensors``) for each requested network.

        Args:
            weights_dir: folder of model cards and weights.
            archs: networks to load; ``None`` loads every ``<arch>.json`` present.
            settings: see :class:`InferenceSettings`.

        With ``archs=None`` a network whose card or weights are refused is left out and the
        others still predict; :attr:`refused` maps each left-out network to the reason. Networks
        asked for by name must all load.

        Raises:
            CheckpointError: missing folder or card, tampered/corrupt weights, card that does not
                match its file name, classes other than :data:`CLASSES` (with ``archs=None``:
                only when no network loads; the first network's error is raised).
            ConfigError: unknown architecture.
        """
        weights_dir = Path(weights_dir)
        known = list_methods()
        explicit = archs is not None
        if archs is not None:
            unknown = [a for a in archs if a not in known]
            if unknown or not archs:
                raise ConfigError(
                    f"Unknown architecture(s) {unknown or list(archs)}; expected one or more of "
                    f"{known} (or 'all')."
                )
        if not weights_dir.is_dir():
            raise CheckpointError(
                f"Weights folder {weights_dir} not found. Expected a folder holding <arch>.json "
                "and <arch>.safetensors (train with `python train.py --arch ARCH`, or pass "
                "--weights DIR)."
            )
        if archs is None:
            archs = [a for a in known if (weights_dir / f"{a}.json").is_file()]
            if not archs:
                raise CheckpointError(
                    f"No model cards in {weights_dir}: expected one or more of "
                    f"{[f'{a}.json' for a in known]} beside their .safetensors files."
                )
        models: dict[str, nn.Module] = {}
        cards: dict[str, ModelCard] = {}
        refused: dict[str, str] = {}
        errors: list[TumorTraceError] = []
        for arch in dict.fromkeys(archs):
            card_path = weights_dir / f"{arch}.json"
            try:
                card = read_card(card_path)
                if card.arch != arch:
                    raise CheckpointError(
                        f"Model card {card_path} describes a {card.arch!r} network, but its file "
                        f"name says {arch!r}; rename the card and its weights to {card.arch}.json "
                        f"/ {card.arch}.safetensors."
                    )
                models[arch], cards[arch] = load_checkpoint(card_path, device="cpu")
            except TumorTraceError as err:
                if explicit:  # asked for by name: the caller wants exactly these networks
                    raise
                refused[arch] = error_line(err)
                errors.append(err)
        if not models:
            raise errors[0]
        predictor = cls(models, cards, settings)
        predictor.refused = refused
        return predictor

    @property
    def device(self) -> torch.device:
        """The device the networks run on."""
        return self._device

    def model(self, arch: str) -> nn.Module:
        """The prepared network ``arch`` (shared: read it, never modify it or hook it)."""
        return self._models[self.select([arch])[0]]

    # -- analysis ------------------------------------------------------------------------------

    def select(self, archs: Iterable[str] | None) -> list[str]:
        """``archs`` deduplicated, in the given order (None: every loaded network).

        Raises:
            ConfigError: a network that is not loaded, or an empty list.
        """
        if archs is None:
            return list(self.archs)
        archs = list(dict.fromkeys(archs))
        missing = [a for a in archs if a not in self.archs]
        if missing or not archs:
            raise ConfigError(
                f"Network(s) {missing or archs} are not loaded; this predictor has {self.archs}."
            )
        return archs

    def analyze(
        self,
        volume: Volume,
        archs: Iterable[str] | None = None,
        target: str | None = None,
        standard: StandardSpace | None = None,
        progress: Callable[[str], None] | None = None,
        method: str | None = None,
        on_result: Callable[[str, Prediction], None] | None = None,
    ) -> Analysis:
        """Classifies and explains one volume with each requested network.

        Brain extraction and registration run once (unless ``standard`` is given); preprocessing
        runs once per distinct preprocessing config among the cards.

        Args:
            volume: a loaded volume (canonical RAS).
            archs: networks to run (default: all loaded).
            target: class to explain (default: each network's own prediction).
            standard: the volume's :class:`StandardSpace` if already computed (e.g. cached by
                the app while the scan is shown).
            progress: called with ``"<arch> (i/n)"`` before each network runs.
            method: a :data:`tumortrace.explanation.CAM_METHODS` name (default
                ``settings.cam_method``).
            on_result: called with ``(arch, Prediction)`` as each network finishes (the app
                fills in its columns one by one).

        Returns:
            :class:`Analysis`.

        Raises:
            ConfigError: unknown network or target class.
            InvalidVolumeError: the volume cannot be preprocessed.
        """
        start = time.perf_counter()
        archs = self.select(archs)
        target_idx = _class_index(target)
        method = method or self.settings.cam_method
        get_cam_method(method)
        prepared: dict[PreprocessConfig, Preprocessed] = {}
        predictions: dict[str, Prediction] = {}
        explanations: dict[str, Explanation] = {}
        odds_maps: dict[str, np.ndarray] = {}
        needs_std = any(self.cards[a].preprocess.space == "mni" for a in archs)
        if standard is None and needs_std:
            standard = standardise(volume)
        for i, arch in enumerate(archs, 1):
            if progress is not None:
                progress(f"{arch} ({i}/{len(archs)})")
            config = self.cards[arch].preprocess
            if config not in prepared:
                prepared[config] = prepare(volume, config, standard)
            if is_baseline(arch):  # a comparison method: probabilities, no map
                predictions[arch] = self._predict(arch, prepared[config])
            else:
                predictions[arch], explanations[arch], odds = self._run(
                    arch, prepared[config], target_idx, method
                )
                if odds is not None:
                    odds_maps[arch] = odds
            if on_result is not None:
                on_result(arch, predictions[arch])
        probs = np.mean([p.probs for p in predictions.values()], axis=0)
        first = self.cards[archs[0]].preprocess
        focus = self._focus(odds_maps, predictions, prepared, archs)
        return Analysis(
            predictions=predictions,
            explanations=explanations,
            ensemble_probs=probs,
            ensemble_label=CLASSES[int(np.argmax(probs))],
            agree=len({p.label for p in predictions.values()}) == 1,
            grid=explanations[archs[0]].grid if archs[0] in explanations else prepared[first].grid,
            seconds=time.perf_counter() - start,
            standard=standard,
            focus=focus,
        )

    def _focus(
        self,
        odds_maps: Mapping[str, np.ndarray],
        predictions: Mapping[str, Prediction],
        prepared: Mapping[PreprocessConfig, Preprocessed],
        archs: Sequence[str],
    ) -> Focus | None:
        """:func:`tumortrace.focus.find_focus` of the networks that share the first network's
        model grid (the shipped cards all do; one with another preprocessing is left out)."""
        nets = [a for a in archs if a in odds_maps]
        if not nets:
            return None
        config = self.cards[nets[0]].preprocess
        pooled = [a for a in nets if self.cards[a].preprocess == config]
        prep = prepared[config]
        return find_focus(
            {a: odds_maps[a] for a in pooled},
            {a: predictions[a].probs for a in pooled},
            prep.grid,
            self.brain_mask(prep),
        )

    def _run(
        self,
        arch: str,
        prep: Preprocessed,
        target_idx: int | None,
        method: str,
    ) -> tuple[Prediction, Explanation, np.ndarray | None]:
        """One forward of ``arch`` on ``prep.tensor``, one backward for the map of the target
        class and, for the focus, one for the ``(D, H, W)`` map of the tumour log-odds (None
        when ``settings.focus`` is off); each backward reads the stages after the first one the
        map reads only."""
        start = time.perf_counter()
        x = prep.tensor.to(self._device, torch.float32)[None]  # (1, 1, D, H, W)
        if self.settings.channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        trunk = self._trunks[arch] if method == self.settings.cam_method else None
        # cams: (N, D, H, W) on the model grid; the graph is kept for the focus's backward
        feats, target, cams = explain_batch(
            self._models[arch], x, method, target=target_idx, trunk=trunk,
            retain_graph=self.settings.focus,
        )  # fmt: skip
        probs = torch.softmax(feats.logits.detach().double(), dim=1)[0].cpu().numpy()
        shape = tuple(prep.tensor.shape[-3:])
        mask = self.brain_mask(prep)
        expl = make_explanation(arch, target, cams[0], prep.grid, shape, mask=mask, method=method)
        odds_map = None
        if self.settings.focus:  # what raised the odds of a tumour over healthy (one backward)
            rule = get_cam_method(method).rule
            maps = score_maps(feats, tumour_log_odds(feats.logits), rule)
            odds_map = finish_map(fuse_maps(maps, shape)[0], mask)
        del feats  # frees the retained graph
        pred = Prediction(
            arch=arch,
            probs=probs,
            label=CLASSES[int(np.argmax(probs))],
            seconds=time.perf_counter() - start,
        )
        return pred, expl, odds_map

    @torch.inference_mode()
    def _predict(self, arch: str, prep: Preprocessed) -> Prediction:
        """One forward of the baseline ``arch`` on ``prep.tensor`` (fp32, no map)."""
        start = time.perf_counter()
        x = prep.tensor.to(self._device, torch.float32)[None]  # (1, 1, D, H, W)
        logits = self._models[arch](x)
        probs = torch.softmax(logits.double(), dim=1)[0].cpu().numpy()
        return Prediction(
            arch=arch,
            probs=probs,
            label=CLASSES[int(np.argmax(probs))],
            seconds=time.perf_counter() - start,
        )

    def brain_mask(self, prep: Preprocessed) -> np.ndarray | None:
        """``(D, H, W)`` bool mask the maps are restricted to, or None when not restricting.

        ``prep.brain`` when preprocessing supplies one (the standard-space pipeline), else the
        foreground of the model input (:func:`tumortrace.explain.brain_mask_on_model_grid`).
        """
        if not self.settings.restrict_to_brain:
            return None
        given = prep.brain
        if given is not None:
            return np.asarray(given, dtype=bool).reshape(prep.tensor.shape[-3:])
        return brain_mask_on_model_grid(prep.tensor)


def _check_card(arch: str, card: ModelCard, model: nn.Module, source: str) -> None:
    """A card must name ``arch``, list :data:`CLASSES`, and match the network's output size."""
    if card.arch != arch:
        raise CheckpointError(
            f"The {source} says arch {card.arch!r}, expected {arch!r}; use the card saved with "
            "these weights."
        )
    if tuple(card.classes) != CLASSES:
        raise CheckpointError(
            f"The {source} has classes {list(card.classes)}; expected {list(CLASSES)} "
            "(in this order). These weights belong to another task."
        )
    if card.preprocess.space == "mni":
        version = card.pipeline.get("version")
        if version != PIPELINE_VERSION:
            raise CheckpointError(
                f"The {source} was trained on standard-space pipeline version {version!r}; this "
                f"TumorTrace runs version {PIPELINE_VERSION} (brain extraction, registration and "
                "normalisation differ), so its inputs would not match what the network learned. "
                "Retrain the weights, or use the TumorTrace release that made them."
            )
    head = getattr(model, "fc", None)
    linear = head[-1] if isinstance(head, nn.Sequential) else head
    out = getattr(linear, "out_features", getattr(model, "num_classes", None))
    if not isinstance(linear, nn.Linear) and is_baseline(arch):  # the HOG-SVM: no linear head
        linear = None
    if (linear is not None and not isinstance(linear, nn.Linear)) or out != len(CLASSES):
        raise CheckpointError(
            f"The {arch!r} network has {out} outputs; expected {len(CLASSES)} for {list(CLASSES)}."
        )


def error_line(err: BaseException) -> str:
    """An error's message on one printable line (its type's name when the message is empty)."""
    return printable(" ".join(str(err).split())) or type(err).__name__
