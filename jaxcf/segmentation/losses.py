"""Segmentation losses of paper 002: Soft Dice (Eq. 2), Dice + cross-entropy, the diffusion
refiner's boundary-weighted objective (Eq. 9) and MedSegDiff's objective (Eq. 12).

Conventions (all functions):

* **Shapes.** Channels-last. ``logits`` are ``(B, *spatial, K)`` raw scores (any number of
  spatial axes, ``K >= 2`` classes); ``labels`` are class indices ``(B, *spatial)`` of an integer
  dtype, not one-hot (a ``labels`` array with the same number of axes as ``logits`` is rejected
  with :class:`~jaxcf.errors.InputError`, as is any spatial-shape mismatch). Index values outside
  ``[0, K)`` give an all-zero one-hot row (as ``jax.nn.one_hot``): such voxels add nothing to the
  Dice intersections and targets, nor to the cross-entropy (the mean still counts them); they are
  not checked, so that the functions run under ``jit``.
* **Probabilities.** ``p = softmax(logits)`` over the class axis (paper 002's ``sigma``).
* **Math.** float32 whatever the input dtype; pure ``jnp``, so every function can be traced by
  ``jax.jit`` / ``jax.grad`` (keyword options are Python values: mark them static or close over
  them). The result is a float32 scalar.

Soft Dice: MONAI's per-class mean versus Eq. 2's pooled ratio. MONAI's ``DiceLoss`` (what the
MONAI-based segmenters of paper 002 were trained with, and the default here) computes one ratio
per (batch item, class) and averages them::

    L = mean_{b,c} [ 1 - (2 sum_i p_{bci} y_{bci} + s_nr) / (sum_i (p_{bci}^q + y_{bci}^q) + s_dr) ]

with ``q = 2`` for ``squared=True`` (MONAI ``squared_pred=True``; Eq. 2's denominator) and
``q = 1`` otherwise; ``batch=True`` sums over the batch axis as well before dividing (one ratio
per class). Every class therefore weighs the same whatever its size, which is what helps small
regions such as enhancing tumour. Eq. 2 as printed instead sums over the classes *inside* one
ratio, ``1 - (2 sum_c sum_i Y Yhat + eps) / (sum_c sum_i (Y^2 + Yhat^2) + eps)``, dominated by the
largest classes (with ``q = 1`` and softmax / one-hot inputs its denominator is simply ``2N``);
``pooled=True`` computes this: one ratio per batch item (``batch=False``, then the mean over
items) or one for the whole batch (``batch=True``). ``include_background=False`` drops class 0
from the Dice term in both forms (not from the cross-entropy, as in MONAI's ``DiceCELoss``).

Cross-entropy (:func:`dice_ce_loss`): as MONAI's ``DiceCELoss(to_onehot_y=True, softmax=True)``
with its defaults, i.e. ``torch.nn.CrossEntropyLoss`` on the logits and the index target with no
class weights, no label smoothing and ``reduction="mean"``: ``-log softmax(logits)[label]``
averaged over all ``B * prod(spatial)`` voxels, all ``K`` classes always included.

Boundary weights (Eq. 9's ``w(x)``, :func:`boundary_weights`): a voxel is on a class edge when at
least one of its ``2 * nd`` face neighbours (offset +-1 along one spatial axis; no diagonals)
*inside the array* has a different label. Both voxels of every differing neighbour pair are edge
voxels, so an edge is two voxels thick; the array's own border is not an edge (a voxel there has
fewer neighbours, none outside), and the batch axis is never a neighbour axis. ``w = edge_weight``
(3) on edges, 1 elsewhere.

Normalisations. Eq. 9 writes the boundary term as a sum over voxels, which would scale with the
volume (a 128^3 crop gives a term ~2e6 times larger than one voxel's) and swamp the Dice-CE term
whatever ``lambda``; :func:`boundary_mse` uses the **mean over voxels** of the weighted squared
error summed over classes, ``mean_{b,x} w(x) sum_c (p_c(x) - y_c(x))^2`` (divided by
``B * prod(spatial)``, not by ``sum w`` nor by ``K``). Eq. 12's noise term
``E ||eps - eps_hat||^2`` (:func:`medsegdiff_loss`) is the mean over all elements of the squared
difference (guided-diffusion's ``mean_flat`` then the batch mean).
"""

from __future__ import annotations

import numbers
from typing import Any

import jax
import jax.numpy as jnp

from jaxcf.errors import InputError

Array = jax.Array

__all__ = [
    "boundary_mse",
    "boundary_weights",
    "cross_entropy",
    "dice_ce_loss",
    "medsegdiff_loss",
    "one_hot",
    "refiner_loss",
    "soft_dice_loss",
]

# ---------------------------------------------------------------- argument checks


def _check_labels(labels: Any, name: str = "labels", min_ndim: int = 2) -> None:
    if not hasattr(labels, "ndim") or not hasattr(labels, "dtype"):
        raise InputError(f"{name}: expected an integer array of class indices, got {type(labels)}")
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise InputError(
            f"{name}: expected integer class indices (B, *spatial), got dtype {labels.dtype}; "
            "cast a label map with .astype(jnp.int32) (one-hot or probability targets are not "
            "accepted)"
        )
    if labels.ndim < min_ndim:
        raise InputError(
            f"{name}: expected shape (B, *spatial) with at least one spatial axis, "
            f"got {tuple(labels.shape)}"
        )


def _check_pair(logits: Any, labels: Any) -> None:
    if not hasattr(logits, "ndim") or logits.ndim < 3:
        shape = tuple(getattr(logits, "shape", ()))
        raise InputError(f"logits: expected shape (B, *spatial, K), got {shape}")
    if logits.shape[-1] < 2:
        raise InputError(
            f"logits: expected K >= 2 classes on the last axis (softmax), got {tuple(logits.shape)}"
        )
    if not hasattr(labels, "ndim"):
        raise InputError(f"labels: expected an integer array of class indices, got {type(labels)}")
    if labels.ndim == logits.ndim:
        raise InputError(
            f"labels: got shape {tuple(labels.shape)} with as many axes as logits "
            f"{tuple(logits.shape)}; expected class indices (B, *spatial) without a channel axis "
            "(pass labels.argmax(-1) for one-hot targets, labels[..., 0] for a (..., 1) map)"
        )
    _check_labels(labels)
    if tuple(labels.shape) != tuple(logits.shape[:-1]):
        raise InputError(
            f"labels: shape {tuple(labels.shape)} does not match logits {tuple(logits.shape)}; "
            f"expected {tuple(logits.shape[:-1])} (B, *spatial)"
        )


def _nonneg(value: Any, name: str) -> None:
    # Only Python / numpy numbers are checked: traced values pass through under jit.
    if isinstance(value, numbers.Real) and not value >= 0:
        raise InputError(f"{name}: expected a number >= 0, got {value!r}")


# ---------------------------------------------------------------- building blocks


def one_hot(labels: Array, num_classes: int) -> Array:
    """One-hot float32 ``(B, *spatial, K)`` of integer ``labels`` ``(B, *spatial)``.

    Values outside ``[0, num_classes)`` give an all-zero row (``jax.nn.one_hot``).
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral):
        raise InputError(f"num_classes: expected a positive integer, got {num_classes!r}")
    if num_classes < 1:
        raise InputError(f"num_classes: expected a positive integer, got {num_classes!r}")
    _check_labels(labels)
    return jax.nn.one_hot(labels, int(num_classes), dtype=jnp.float32)


def _probs_targets(logits: Array, labels: Array) -> tuple[Array, Array]:
    _check_pair(logits, labels)
    logits = jnp.asarray(logits, jnp.float32)
    probs = jax.nn.softmax(logits, axis=-1)
    return probs, one_hot(labels, logits.shape[-1])


def _soft_dice(
    probs: Array,
    targets: Array,
    *,
    squared: bool,
    include_background: bool,
    batch: bool,
    pooled: bool,
    smooth_nr: float,
    smooth_dr: float,
) -> Array:
    if not include_background:
        probs, targets = probs[..., 1:], targets[..., 1:]
    spatial = tuple(range(1, probs.ndim - 1))
    # per-item sums over voxels (and classes when pooled); batch=True adds the batch axis
    axes = spatial + ((probs.ndim - 1,) if pooled else ())
    if batch:
        axes = (0, *axes)
    intersection = jnp.sum(probs * targets, axis=axes)
    if squared:
        denominator = jnp.sum(probs * probs, axis=axes) + jnp.sum(targets * targets, axis=axes)
    else:
        denominator = jnp.sum(probs, axis=axes) + jnp.sum(targets, axis=axes)
    loss = 1.0 - (2.0 * intersection + smooth_nr) / (denominator + smooth_dr)
    return jnp.mean(loss)


def soft_dice_loss(
    logits: Array,
    labels: Array,
    *,
    squared: bool = False,
    include_background: bool = True,
    batch: bool = False,
    pooled: bool = False,
    smooth_nr: float = 1e-5,
    smooth_dr: float = 1e-5,
) -> Array:
    """Soft Dice loss of ``softmax(logits)`` ``(B, *spatial, K)`` against integer ``labels``.

    Default (``pooled=False``): MONAI's ``DiceLoss(to_onehot_y=True, softmax=True,
    squared_pred=squared, include_background=..., batch=..., smooth_nr=..., smooth_dr=...)`` with
    ``reduction="mean"``: ``1 - (2 sum p y + smooth_nr) / (sum (p^q + y^q) + smooth_dr)`` per
    (item, class) (per class with ``batch=True``; sums over voxels), then the mean. ``squared=True``
    (``q = 2``) is paper 002's Eq. 2 denominator ``sum Y^2 + Yhat^2``; ``q = 1`` otherwise (MONAI's
    default). ``pooled=True``: Eq. 2 as printed, the classes summed inside one ratio per item (per
    batch with ``batch=True``), then the mean over items. ``include_background=False`` leaves out
    class 0. See the module docstring for the difference between the two forms.
    """
    probs, targets = _probs_targets(logits, labels)
    return _soft_dice(
        probs,
        targets,
        squared=squared,
        include_background=include_background,
        batch=batch,
        pooled=pooled,
        smooth_nr=smooth_nr,
        smooth_dr=smooth_dr,
    )


def cross_entropy(logits: Array, labels: Array) -> Array:
    """Mean over all voxels of ``-log softmax(logits)[label]`` (``torch.nn.CrossEntropyLoss``
    with an index target, no weights, ``reduction="mean"``); out-of-range labels contribute 0."""
    _check_pair(logits, labels)
    logits = jnp.asarray(logits, jnp.float32)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    targets = one_hot(labels, logits.shape[-1])
    return -jnp.mean(jnp.sum(targets * log_probs, axis=-1))


def dice_ce_loss(
    logits: Array,
    labels: Array,
    *,
    lambda_dice: float = 1.0,
    lambda_ce: float = 1.0,
    **dice_kwargs: Any,
) -> Array:
    """``lambda_dice * soft_dice_loss + lambda_ce * cross_entropy`` (paper 002's ``L_DiceCE``).

    With the defaults this is MONAI's ``DiceCELoss(to_onehot_y=True, softmax=True)`` (same
    ``lambda_dice``, ``lambda_ce``; ``dice_kwargs`` -- ``squared``, ``include_background``,
    ``batch``, ``smooth_nr``, ``smooth_dr``, ``pooled`` -- go to :func:`soft_dice_loss` only, as
    MONAI's Dice-only options do). The cross-entropy is the plain voxel mean over all ``K``
    classes (no class weights, no label smoothing).
    """
    _nonneg(lambda_dice, "lambda_dice")
    _nonneg(lambda_ce, "lambda_ce")
    unknown = set(dice_kwargs) - {
        "squared",
        "include_background",
        "batch",
        "pooled",
        "smooth_nr",
        "smooth_dr",
    }
    if unknown:
        raise InputError(f"dice_ce_loss: unknown Dice options {sorted(unknown)}")
    dice = soft_dice_loss(logits, labels, **dice_kwargs)
    ce = cross_entropy(logits, labels)
    return lambda_dice * dice + lambda_ce * ce


def boundary_weights(labels: Array, edge_weight: float = 3.0) -> Array:
    """Eq. 9's ``w(x)``: float32 ``(B, *spatial)``, ``edge_weight`` on class edges, 1 elsewhere.

    A voxel is an edge voxel when one of its face neighbours (+-1 along one spatial axis, inside
    the array) has a different label: both voxels of a differing pair are marked (edges two
    voxels thick). The array's border is not an edge by itself and the batch axis (0) is not a
    neighbour axis. ``labels`` are integer class indices ``(B, *spatial)``.
    """
    _check_labels(labels)
    labels = jnp.asarray(labels)
    edge = jnp.zeros(labels.shape, dtype=bool)
    for axis in range(1, labels.ndim):
        n = labels.shape[axis]
        if n < 2:
            continue
        lo = jax.lax.slice_in_dim(labels, 0, n - 1, axis=axis)
        hi = jax.lax.slice_in_dim(labels, 1, n, axis=axis)
        diff = lo != hi  # between voxel i and i + 1 along `axis`
        pad_after = [(0, 0)] * labels.ndim
        pad_before = [(0, 0)] * labels.ndim
        pad_after[axis] = (0, 1)
        pad_before[axis] = (1, 0)
        # voxel i differs from i + 1, or from i - 1
        edge = edge | jnp.pad(diff, pad_after) | jnp.pad(diff, pad_before)
    return jnp.where(edge, jnp.float32(edge_weight), jnp.float32(1.0))


def boundary_mse(logits: Array, labels: Array, weights: Array | None = None) -> Array:
    """Eq. 9's boundary-weighted MSE, ``mean_{b,x} w(x) sum_c (softmax(logits)_c - y_c)^2``.

    ``logits`` ``(B, *spatial, K)`` (the softmax is taken here: Eq. 9's ``sigma(Yhat_0)``),
    ``labels`` integer ``(B, *spatial)`` (one-hot inside), ``weights`` ``(B, *spatial)``
    (default :func:`boundary_weights` of ``labels`` with ``edge_weight=3``). Normalised by the
    number of voxels ``B * prod(spatial)`` (not by ``sum w``, not by ``K``); Eq. 9's plain sum
    would grow with the volume size.
    """
    probs, targets = _probs_targets(logits, labels)
    if weights is None:
        weights = boundary_weights(labels)
    elif tuple(weights.shape) != tuple(labels.shape):
        raise InputError(
            f"weights: shape {tuple(weights.shape)} does not match labels {tuple(labels.shape)}"
        )
    squared_error = jnp.sum((probs - targets) ** 2, axis=-1)
    return jnp.mean(jnp.asarray(weights, jnp.float32) * squared_error)


def refiner_loss(
    logits: Array,
    labels: Array,
    *,
    mse_weight: float = 0.1,
    edge_weight: float = 3.0,
    **dice_ce_kwargs: Any,
) -> Array:
    """Paper 002's diffusion-refiner objective (Eq. 9): ``dice_ce_loss(logits, labels) +
    mse_weight * boundary_mse(logits, labels, boundary_weights(labels, edge_weight))``.

    ``logits`` are the network's ``Yhat_0`` ``(B, *spatial, K)`` (x0-parameterisation; softmax
    taken inside), ``labels`` the ground-truth indices ``(B, *spatial)``. ``dice_ce_kwargs`` go to
    :func:`dice_ce_loss` (defaults: MONAI ``DiceCELoss(to_onehot_y=True, softmax=True)``).
    """
    _nonneg(mse_weight, "mse_weight")
    dice_ce = dice_ce_loss(logits, labels, **dice_ce_kwargs)
    weights = boundary_weights(labels, edge_weight)
    return dice_ce + mse_weight * boundary_mse(logits, labels, weights)


def medsegdiff_loss(
    eps_pred: Array,
    eps: Array,
    calibration_logits: Array,
    labels: Array,
    *,
    gamma: float = 10.0,
    **dice_ce_kwargs: Any,
) -> Array:
    """MedSegDiff's objective (paper 002 Eq. 12): ``mean((eps - eps_pred)^2) + gamma *
    dice_ce_loss(calibration_logits, labels)``.

    ``eps_pred`` and ``eps`` any equal shape (the noise term is the mean over all elements);
    ``calibration_logits`` ``(B, *spatial, K)`` are the highway network's mask ``c``,
    ``labels`` ``(B, *spatial)`` integer indices; ``gamma = 10`` as in the paper.
    """
    _nonneg(gamma, "gamma")
    if tuple(eps_pred.shape) != tuple(eps.shape):
        raise InputError(
            f"eps_pred: shape {tuple(eps_pred.shape)} does not match eps {tuple(eps.shape)}"
        )
    diff = jnp.asarray(eps_pred, jnp.float32) - jnp.asarray(eps, jnp.float32)
    noise = jnp.mean(diff * diff)
    return noise + gamma * dice_ce_loss(calibration_logits, labels, **dice_ce_kwargs)
