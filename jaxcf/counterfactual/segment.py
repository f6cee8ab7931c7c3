"""Counterfactual segmentation with a trained model: batches of slices in, healthy
counterfactuals, heatmaps and tumour masks out. Shared by `python -m jaxcf.counterfactual`,
`python -m jaxcf.evaluate` and the quickstart demo.

    seg = Segmenter(load_trained(workdir), config.counterfactual)
    out = seg.run("diffscm", images)                    # images (B, S, S, 4) in [-1, 1]
    out = seg.run("promptable", images, regions)        # regions (B, S, S) 1 = regenerate
    masks = seg.masks(images, out["counterfactual"])    # paper 000's post-processing

Batches are cut into fixed-size chunks of `counterfactual.batch_size` (the last one padded),
so each method compiles once whatever the number of slices.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage

from jaxcf import diffusion as D
from jaxcf.counterfactual.diffscm import difference_map, diffscm
from jaxcf.counterfactual.promptable import promptable_counterfactual
from jaxcf.evaluation import postprocess

METHODS = ("diffscm", "promptable")
REGIONS = ("box", "brain", "seg", "file")


def brain_masks(images: np.ndarray) -> np.ndarray:
    """(B, S, S, C) slices in [-1, 1] (background -1) -> (B, S, S) bool brain masks."""
    return postprocess.foreground_mask(images, background=-1.0)


def box_regions(seg: np.ndarray, margin: int) -> np.ndarray:
    """(B, S, S) tumour masks -> (B, S, S) bool boxes: each slice's tumour bounding box grown
    by `margin` pixels: the box prompt a user would draw (paper 000's mask prompt). A slice
    without tumour gets an empty box."""
    out = np.zeros(seg.shape, bool)
    for i, s in enumerate(seg):
        rows, cols = np.flatnonzero(s.any(1)), np.flatnonzero(s.any(0))
        if rows.size:
            r0, r1 = max(rows[0] - margin, 0), rows[-1] + margin + 1
            c0, c1 = max(cols[0] - margin, 0), cols[-1] + margin + 1
            out[i, r0:r1, c0:c1] = True
    return out


def prompt_regions(
    kind: str,
    images: np.ndarray,
    seg: np.ndarray | None = None,
    margin: int = 3,
    given: np.ndarray | None = None,
) -> np.ndarray:
    """The promptable method's region to regenerate, (B, S, S) bool, cut to the brain."""
    brain = brain_masks(images)
    if kind == "brain":
        region = brain
    elif kind in ("box", "seg"):
        if seg is None:
            raise ValueError(
                f"counterfactual.region={kind!r} needs a tumour segmentation; this case has "
                "none: use --mask=FILE (region=file) or region=brain"
            )
        tumour = np.asarray(seg) > 0
        region = (
            box_regions(tumour, margin)
            if kind == "box"
            else ndimage.binary_dilation(tumour, iterations=1, structure=np.ones((1, 3, 3), bool))
        )
    elif kind == "file":
        if given is None:
            raise ValueError("counterfactual.region='file' needs --mask=FILE")
        region = np.asarray(given, bool)
    else:
        raise ValueError(f"counterfactual.region must be one of {REGIONS}, got {kind!r}")
    return region & brain


class Segmenter:
    """Runs the counterfactual methods of config.counterfactual with a TrainedModel."""

    def __init__(self, trained: Any, options: Any):
        self.trained = trained
        self.options = options
        if trained.task.condition != "label":
            raise ValueError(
                "counterfactual segmentation needs a label-conditioned model "
                f"(diffusion.condition='label'); this one is {trained.task.condition!r}"
            )
        self.num_classes = trained.num_classes
        healthy = int(options.healthy_label)
        if not 0 <= healthy < self.num_classes:
            raise ValueError(
                f"counterfactual.healthy_label={healthy} is not a class of this model "
                f"(num_classes={self.num_classes})"
            )
        self._fns: dict[str, Any] = {}
        self._params = (trained.params, trained.frozen)

    # -- compiled methods ------------------------------------------------------------------

    def _function(self, method: str):
        """jit(fn(params, frozen, x, ...)): weights are arguments, not constants folded into
        the executable (a 130M-parameter DiT would otherwise be baked into every compile)."""
        if method in self._fns:
            return self._fns[method]
        o, task = self.options, self.trained.task
        if task.space == "wavelet":
            raise ValueError("counterfactual segmentation runs on 2-D slice models, not WDM")
        latent = task.space == "latent"
        schedule = task.schedule
        if method == "diffscm":
            options = dict(
                num_steps=int(o.num_steps),
                strength=float(o.strength),
                guidance_scale=float(o.guidance_scale),
                quantile=float(o.quantile) if o.quantile else None,
                model_time=o.model_time,
            )

            @jax.jit
            def fn(params, frozen, x, null_cond, target_cond):
                model_fn = task.model_fn(params, frozen)
                x0 = task.encode(frozen, x) if latent else x
                out = diffscm(
                    model_fn, schedule, x0, null_cond=null_cond, target_cond=target_cond, **options
                )
                if not latent:
                    return out
                # Diff-SCM in a latent model's latent space; the heatmap is in pixels.
                x_cf = task.decode(frozen, out["counterfactual"])
                return {"counterfactual": x_cf, "heatmap": difference_map(x, x_cf)}

        elif method == "promptable":
            resample = None
            if int(o.resample_jump) > 0 and int(o.resample_count) > 0:
                resample = (int(o.resample_jump), int(o.resample_count))
            options = dict(
                num_steps=int(o.num_steps),
                guidance_scale=float(o.guidance_scale),
                resample=resample,
                # guided-diffusion's clip_denoised: pixel models predict x0 in [-1, 1]
                x0_transform=None if latent else D.static_clip,
            )

            @jax.jit
            def fn(params, frozen, x, region, key, cond, null_cond):
                codec = {}
                if latent:
                    codec = dict(
                        encode=lambda images: task.encode(frozen, images),
                        decode=lambda z: task.decode(frozen, z),
                    )
                return promptable_counterfactual(
                    task.model_fn(params, frozen),
                    schedule,
                    x,
                    region,
                    key=key,
                    cond=cond,
                    null_cond=null_cond,
                    **codec,
                    **options,
                )

        else:
            raise ValueError(f"--method must be one of {METHODS}, got {method!r}")
        self._fns[method] = fn
        return fn

    def run(
        self, method: str, images: np.ndarray, regions: np.ndarray | None = None
    ) -> dict[str, np.ndarray]:
        """images (B, S, S, C) in [-1, 1]; regions (B, S, S) bool for promptable.
        Returns {"counterfactual": (B, S, S, C), "heatmap": (B, S, S)} as numpy."""
        fn = self._function(method)
        if method == "promptable" and regions is None:
            raise ValueError("the promptable method needs regions (B, S, S)")
        chunk = int(self.options.batch_size)
        total = images.shape[0]
        outputs: dict[str, list[np.ndarray]] = {"counterfactual": [], "heatmap": []}
        key = jax.random.key(int(self.options.seed))
        for start in range(0, total, chunk):
            x = _pad(images[start : start + chunk], chunk)
            labels = np.full((chunk,), int(self.options.healthy_label), np.int32)
            target = {"label": jnp.asarray(labels)}
            null = {"label": jnp.array([self.num_classes], jnp.int32)}
            if method == "diffscm":
                out = fn(*self._params, jnp.asarray(x), null, target)
            else:
                r = _pad(regions[start : start + chunk].astype(np.float32), chunk)[..., None]
                out = fn(
                    *self._params,
                    jnp.asarray(x),
                    jnp.asarray(r),
                    jax.random.fold_in(key, start),
                    target,
                    null,
                )
            n = min(chunk, total - start)
            for name in outputs:
                outputs[name].append(np.asarray(out[name])[:n])
        return {name: np.concatenate(parts) for name, parts in outputs.items()}

    def masks(self, images: np.ndarray, counterfactuals: np.ndarray) -> np.ndarray:
        """Paper 000's post-processing per slice -> (B, S, S) bool tumour masks."""
        brain = brain_masks(images)
        return np.stack(
            [
                postprocess.segment_from_counterfactual(
                    x, cf, brain_mask=b, vote_rule=self.options.vote
                )
                if b.any()
                else np.zeros(b.shape, bool)
                for x, cf, b in zip(images, counterfactuals, brain, strict=True)
            ]
        )


def _pad(array: np.ndarray, size: int) -> np.ndarray:
    """Pad the batch axis to `size` by repeating the last row (shapes stay fixed)."""
    missing = size - array.shape[0]
    if missing <= 0:
        return array
    return np.concatenate([array, np.repeat(array[-1:], missing, axis=0)])
