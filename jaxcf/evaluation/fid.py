"""Fréchet distance between feature distributions of real and generated 3-D volumes: FID on
Med3D features (paper 004, "FID (Med3D features [2])"; Heusel et al. 2017 for FID).

    extractor = med3d_extractor("resnet_50_23dataset.pth")   # MedicalNet weights
    result = fid_3d(real, fake, extractor, value_range=(-1, 1))
    print(result)            # FID (Med3D resnet50) = ... (weights: resnet_50_23dataset.pth, ...)

The distance (Dowson & Landau 1982) between N(mu1, S1) and N(mu2, S2) is

    d^2 = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2))

with means and unbiased covariances (ddof 1, as pytorch-fid) of the feature vectors.

Naming. The number is a *Fréchet Inception-style distance* only when the features come from a
trained network. An extractor with random weights still gives a well-defined Fréchet
distance, but not one comparable to any paper's FID, so every result carries its extractor
(name, trained, weight source) and an untrained one is labelled "FD (untrained ... features)";
:class:`FIDResult` and :func:`table_column` refuse the name FID for it.

Preprocessing (MedicalNet datasets/brains18.py, `__itensity_normalize_one_volume__`): each
volume is z-scored per channel over its foreground voxels (`volume > 0` in MedicalNet, raw
intensities with a zero background). jaxcf volumes usually live in [-1, 1] with background -1:
pass `value_range=(-1, 1)` to map them to [0, 1] first, so that the background becomes 0;
`threshold` moves the foreground cut (in the mapped units) for generated volumes whose
background is not exactly zero. Two deliberate differences: MedicalNet's loader then
replaces the background by N(0, 1) noise, which is left out here so that the metric is
deterministic (background voxels keep their z-score); and volumes are not resized (MedicalNet
resizes to its training crop, 56 x 448 x 448, by nearest-neighbour zoom): the ResNet is fully
convolutional and globally pooled, so any size works, but real and
generated volumes must share one shape so that their features are comparable.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
from collections.abc import Iterable, Iterator
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg
from flax import nnx
from tqdm import tqdm

from jaxcf.convert.medicalnet import load_medicalnet
from jaxcf.errors import InputError
from jaxcf.models.med3d import Med3D, Med3DConfig, medicalnet_config

Volumes = np.ndarray | jax.Array | Iterable[np.ndarray | jax.Array]

# --- the closed form ----------------------------------------------------------------------------


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, F) feature vectors -> mean (F,) and unbiased covariance (F, F), float64."""
    f = np.asarray(features, np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise InputError(f"feature_statistics: need (N >= 2, F) features, got shape {f.shape}")
    if not np.isfinite(f).all():
        raise InputError("feature_statistics: the features hold NaN or inf")
    return f.mean(axis=0), np.atleast_2d(np.cov(f, rowvar=False))


def _psd_eigvals(m: np.ndarray) -> np.ndarray:
    """Eigenvalues of a symmetric PSD matrix with those below its numerical rank (numpy's
    matrix_rank tolerance, max * n * eps) set to 0: rounding leaves ~1e-16 * max there, whose
    square roots would add ~1e-8 * sqrt(max) each to a trace of square roots."""
    lam = np.linalg.eigvalsh((m + m.T) / 2)
    tol = max(float(lam.max()), 0.0) * m.shape[0] * np.finfo(np.float64).eps
    return np.where(lam > tol, lam, 0.0)


def _trace_sqrt_product(s1: np.ndarray, s2: np.ndarray) -> float:
    """tr((S1 S2)^(1/2)) for symmetric PSD S1, S2 as sum_i sqrt(lambda_i) of the symmetric
    PSD M = S1^(1/2) S2 S1^(1/2): S1 S2 = S1^(1/2) (S1^(1/2) S2) has the eigenvalues of M,
    and M, unlike S1 S2, is symmetric, so eigh is exact to rounding and singular
    covariances (fewer samples than features) need no eps offset."""
    lam, u = np.linalg.eigh((s1 + s1.T) / 2)
    tol = max(float(lam.max()), 0.0) * s1.shape[0] * np.finfo(np.float64).eps
    root = (u * np.sqrt(np.where(lam > tol, lam, 0.0))) @ u.T
    return float(np.sqrt(_psd_eigvals(root @ s2 @ root)).sum())


def _trace_sqrtm_pytorch_fid(s1: np.ndarray, s2: np.ndarray, eps: float) -> float:
    """tr(sqrtm(S1 S2)) exactly as pytorch-fid's calculate_frechet_distance: scipy's sqrtm;
    if that is not finite, retry with eps * I added to both; small imaginary parts (from
    rounding) are dropped, large ones raise."""
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        offset = np.eye(s1.shape[0]) * eps
        covmean = scipy.linalg.sqrtm((s1 + offset) @ (s2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise InputError(
                f"frechet_distance: sqrtm(S1 S2) has an imaginary part up to "
                f"{np.abs(covmean.imag).max():.3g}; the covariances are not PSD"
            )
        covmean = covmean.real
    return float(np.trace(covmean))


def frechet_distance(
    mu1: np.ndarray,
    sigma1: np.ndarray,
    mu2: np.ndarray,
    sigma2: np.ndarray,
    *,
    method: Literal["eigh", "sqrtm"] = "eigh",
    eps: float = 1e-6,
) -> float:
    """Squared Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2): means (F,),
    covariances (F, F), float64 arithmetic.

    method "eigh" (default): tr((S1 S2)^(1/2)) from the eigenvalues of S1^(1/2) S2 S1^(1/2)
    (exact for PSD inputs, singular ones included); "sqrtm": pytorch-fid's scipy sqrtm with
    its eps * I retry, for bit-level comparison with numbers computed that way. The result
    is clipped at 0 (rounding can give -1e-12 for identical statistics).
    """
    mu1, mu2 = (
        np.atleast_1d(np.asarray(mu1, np.float64)),
        np.atleast_1d(np.asarray(mu2, np.float64)),
    )
    s1, s2 = (
        np.atleast_2d(np.asarray(sigma1, np.float64)),
        np.atleast_2d(np.asarray(sigma2, np.float64)),
    )
    f = mu1.shape[0]
    if mu1.shape != (f,) or mu2.shape != (f,) or s1.shape != (f, f) or s2.shape != (f, f):
        raise InputError(
            f"frechet_distance: means (F,) and covariances (F, F) of one F, got {mu1.shape}, "
            f"{s1.shape}, {mu2.shape}, {s2.shape}"
        )
    if method == "eigh":
        tr_covmean = _trace_sqrt_product(s1, s2)
    elif method == "sqrtm":
        tr_covmean = _trace_sqrtm_pytorch_fid(s1, s2, eps)
    else:
        raise InputError(f"frechet_distance: method 'eigh' or 'sqrtm', got {method!r}")
    diff = mu1 - mu2
    d2 = diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean
    return max(float(d2), 0.0)


# --- the feature extractor ----------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("graphdef", "value_range", "threshold"))
def _batch_features(graphdef, variables, x, value_range, threshold):
    """(B, D, H, W, C) -> features (B, F), foreground counts (B, C) and stds (B, C)."""
    x = x.astype(jnp.float32)
    if value_range is not None:
        lo, hi = value_range
        x = (x - lo) / (hi - lo)
    # MedicalNet brains18.py: mean and (population) std over `volume > 0`, per volume.
    mask = x > threshold
    axes = (1, 2, 3)
    count = mask.sum(axes, keepdims=True)
    mean = jnp.where(mask, x, 0.0).sum(axes, keepdims=True) / count
    var = jnp.where(mask, jnp.square(x - mean), 0.0).sum(axes, keepdims=True) / count
    std = jnp.sqrt(var)
    z = (x - mean) / std
    feats = nnx.merge(graphdef, variables)(z)
    return feats, count.reshape(count.shape[0], -1), std.reshape(std.shape[0], -1)


def _batches(volumes: Volumes, batch_size: int) -> Iterator[np.ndarray]:
    """Split an (N, D, H, W, C) array into batches, or pass an iterable of batches through."""
    if isinstance(volumes, np.ndarray | jax.Array):
        for start in range(0, volumes.shape[0], batch_size):
            yield volumes[start : start + batch_size]
    else:
        yield from volumes


@dataclasses.dataclass(frozen=True, eq=False)
class FeatureExtractor:
    """A frozen 3-D feature network and where its weights came from.

    graphdef / variables: nnx.split of a module mapping (B, D, H, W, in_channels) ->
    (B, feature_dim); the variables are a jit argument, never a baked-in constant.
    name: e.g. "Med3D resnet50"; trained: whether the weights were learnt (only then is the
    distance called FID); source: the checkpoint path, or "random init (seed 0)".
    """

    graphdef: Any
    variables: nnx.State
    name: str
    trained: bool
    source: str
    in_channels: int
    feature_dim: int

    @classmethod
    def from_model(
        cls, model: nnx.Module, *, trained: bool, source: str, name: str | None = None
    ) -> FeatureExtractor:
        """Wrap a Med3D (or any module with a Med3DConfig-like `config`)."""
        config = model.config
        graphdef, variables = nnx.split(model)
        return cls(
            graphdef,
            variables,
            name or config.name,
            trained,
            source,
            config.in_channels,
            config.feature_dim,
        )

    def features(self, volumes: Volumes, **kwargs: Any) -> np.ndarray:
        """(N, D, H, W, C) volumes (an array, or an iterable of such batches) -> (N, F)
        float32 features; keyword arguments as :meth:`features_and_shape`."""
        return self.features_and_shape(volumes, **kwargs)[0]

    def features_and_shape(
        self,
        volumes: Volumes,
        *,
        batch_size: int = 4,
        value_range: tuple[float, float] | None = None,
        threshold: float = 0.0,
        what: str = "volumes",
        progress: bool = True,
    ) -> tuple[np.ndarray, tuple[int, ...]]:
        """(N, D, H, W, C) volumes (an array, or an iterable of such batches) -> (N, F)
        float32 features and the (D, H, W, C) shape of the volumes; one jitted call per
        batch of `batch_size` (the last one padded).
        Raises InputError naming `what` and the item for NaN / inf voxels, a wrong channel
        count or shape, or a volume without foreground (nothing above `threshold`)."""
        if value_range is not None:
            value_range = (float(value_range[0]), float(value_range[1]))
            if not value_range[1] > value_range[0]:
                raise InputError(f"value_range: need lo < hi, got {value_range}")
        out, shape, seen = [], None, 0
        for batch in tqdm(
            _batches(volumes, batch_size), desc=f"{self.name} features", disable=not progress
        ):
            batch = np.asarray(batch)
            if batch.ndim != 5 or batch.shape[-1] != self.in_channels:
                raise InputError(
                    f"{what}: expected channels-last (N, D, H, W, {self.in_channels}) volumes "
                    f"for {self.name}, got a batch of shape {batch.shape}"
                )
            if shape is not None and batch.shape[1:] != shape:
                raise InputError(f"{what}: volumes of shapes {shape} and {batch.shape[1:]}")
            shape = batch.shape[1:]
            bad = np.flatnonzero(~np.isfinite(batch).reshape(batch.shape[0], -1).all(axis=1))
            if bad.size:
                raise InputError(f"{what}: item {seen + int(bad[0])} holds NaN or inf voxels")
            n = batch.shape[0]
            # Pad to a fixed batch (repeating the last item) so that one compilation serves
            # every batch; the copies are dropped.
            if n < batch_size:
                batch = np.concatenate([batch, np.repeat(batch[-1:], batch_size - n, axis=0)])
            feats, count, std = _batch_features(
                self.graphdef, self.variables, jnp.asarray(batch), value_range, float(threshold)
            )
            count, std = np.asarray(count)[:n], np.asarray(std)[:n]
            empty = np.flatnonzero(((count == 0) | ~(std > 0)).any(axis=1))
            if empty.size:
                raise InputError(
                    f"{what}: item {seen + int(empty[0])} has no foreground to normalise (no "
                    f"voxels above threshold {threshold}, or all equal); check value_range="
                )
            out.append(np.asarray(feats, np.float32)[:n])
            seen += n
        if not out:
            raise InputError(f"{what}: no volumes")
        return np.concatenate(out), shape


def med3d_extractor(
    checkpoint: str | os.PathLike | None = None,
    *,
    config: Med3DConfig | int | None = None,
    dilated: bool = True,
    seed: int = 0,
    dtype: Any = None,
) -> FeatureExtractor:
    """A Med3D feature extractor: MedicalNet / MONAI weights from `checkpoint` (trained), or,
    without one, a random initialisation (untrained: its distances are never called FID).

    config: the sizes (an int picks MedicalNet's resnet{depth}). Without a checkpoint it
    defaults to resnet50 (2048-d features); with one, the sizes are read from the weights
    unless given, in which case the checkpoint must fit them. dilated: MedicalNet's layers
    3-4 (False for a MONAI ResNet). seed: of the random init. dtype: conv compute dtype.
    """
    if isinstance(config, int):
        config = medicalnet_config(config, dilated=dilated)
    if checkpoint is None:
        config = medicalnet_config(50, dilated=dilated) if config is None else config
        model = Med3D(config, dtype=dtype, rngs=nnx.Rngs(seed))
        return FeatureExtractor.from_model(
            model, trained=False, source=f"random init (seed {seed})"
        )
    model, _ = load_medicalnet(checkpoint, config, dilated=dilated, dtype=dtype)
    return FeatureExtractor.from_model(model, trained=True, source=str(checkpoint))


# --- results ------------------------------------------------------------------------------------

_FID_NAME = re.compile(r"\bFID\b|fr[eé]chet inception", re.IGNORECASE)


def metric_label(extractor: FeatureExtractor) -> str:
    """The name tables use: "FID (Med3D resnet50)" for trained features, "FD (untrained Med3D
    resnet50 features)" otherwise."""
    if extractor.trained:
        return f"FID ({extractor.name})"
    return f"FD (untrained {extractor.name} features)"


@dataclasses.dataclass(frozen=True)
class FIDResult:
    """A Fréchet distance with the extractor it was measured with; `label` is how tables
    name it, and may say FID only for trained features."""

    value: float
    label: str
    extractor: str
    trained: bool
    source: str
    feature_dim: int
    num_real: int
    num_fake: int

    def __post_init__(self):
        if not self.trained and _FID_NAME.search(self.label):
            raise InputError(
                f"{self.label!r}: a distance on untrained {self.extractor} features is not an "
                "FID; label it 'FD (untrained ... features)'"
            )

    def as_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict."""
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        return (
            f"{self.label} = {self.value:.4f} (extractor: {self.extractor}, weights: "
            f"{self.source}; {self.num_real} real, {self.num_fake} generated, "
            f"{self.feature_dim}-d features)"
        )


def table_column(result: FIDResult, name: str | None = None) -> tuple[str, float]:
    """(column header, value) for a results table (e.g. jaxcf.evaluation.markdown_table):
    the header is `name` or the result's label; InputError when `name` calls a distance on
    untrained features FID."""
    header = result.label if name is None else name
    if not result.trained and _FID_NAME.search(header):
        raise InputError(
            f"table column {header!r}: {result.label} was measured on untrained "
            f"{result.extractor} features ({result.source}); it cannot be reported as FID"
        )
    return header, result.value


def fid_from_features(
    real_features: np.ndarray,
    fake_features: np.ndarray,
    extractor: FeatureExtractor,
    *,
    method: Literal["eigh", "sqrtm"] = "eigh",
) -> FIDResult:
    """The Fréchet distance of two (N, F) feature sets from `extractor` (e.g. real-set
    features computed once and kept), labelled by the extractor."""
    mu1, s1 = feature_statistics(real_features)
    mu2, s2 = feature_statistics(fake_features)
    return FIDResult(
        value=frechet_distance(mu1, s1, mu2, s2, method=method),
        label=metric_label(extractor),
        extractor=extractor.name,
        trained=extractor.trained,
        source=extractor.source,
        feature_dim=int(mu1.shape[0]),
        num_real=int(np.shape(real_features)[0]),
        num_fake=int(np.shape(fake_features)[0]),
    )


def fid_3d(
    real_volumes: Volumes,
    fake_volumes: Volumes,
    extractor: FeatureExtractor,
    *,
    batch_size: int = 4,
    value_range: tuple[float, float] | None = None,
    threshold: float = 0.0,
    method: Literal["eigh", "sqrtm"] = "eigh",
    progress: bool = True,
) -> FIDResult:
    """Fréchet distance of Med3D features of real vs generated volumes, each (N, D, H, W, C)
    (arrays, or iterables of batches; >= 2 volumes each, one shared shape). Labelled FID only
    for a trained extractor. Preprocessing as the module docstring says."""
    kw = dict(batch_size=batch_size, value_range=value_range, threshold=threshold)
    real, shape = extractor.features_and_shape(
        real_volumes, what="real_volumes", progress=progress, **kw
    )
    fake, fake_shape = extractor.features_and_shape(
        fake_volumes, what="fake_volumes", progress=progress, **kw
    )
    if fake_shape != shape:
        raise InputError(
            f"fid_3d: real volumes {shape} and generated volumes {fake_shape} differ in shape"
        )
    return fid_from_features(real, fake, extractor, method=method)


__all__ = [
    "FIDResult",
    "FeatureExtractor",
    "feature_statistics",
    "fid_3d",
    "fid_from_features",
    "frechet_distance",
    "med3d_extractor",
    "metric_label",
    "table_column",
]
