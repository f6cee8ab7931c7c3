"""Prompt-swap counterfactuals of 3-D volumes (paper 004) to NIfTI and PNG, shared by
`python -m jaxcf.counterfactual --method=prompt_swap`.

    summary = run(trained, out_dir)                       # synthetic subjects (the paper)
    summary = run(trained, out_dir, subject="sub.nii.gz")  # a real subject, inverted

A real subject is read as the model's data was prepared (transforms.wdm_volume: percentile
clip, min-max, zero-padding to a cube, average pooling to data.volume_size, value range) and
every output is written on that cube with an affine that maps its voxels onto the input's
world coordinates (padding and pooling undone), so the files overlay the input in any
viewer. Synthetic subjects have no source scan: their affine is the identity at the
training data's voxel grid.
"""

from __future__ import annotations

import pathlib
import time
from typing import Any

import ml_collections
import nibabel as nib
import numpy as np

from jaxcf.counterfactual import cases
from jaxcf.counterfactual.runner import MethodRunner
from jaxcf.data import transforms
from jaxcf.errors import InputError
from jaxcf.evaluation.image_metrics import ms_ssim_settings, subject_preservation

METHOD = "prompt_swap"


def cube_affine(shape: tuple[int, ...], affine: np.ndarray, volume_size: int) -> np.ndarray:
    """The affine of wdm_volume's (S, S, S) cube of an (X, Y, Z) volume with `affine`: cube
    voxel i sits at input voxel (i + 1/2) f - 1/2 - pad (f the pooling factor, pad the
    zero-padding before the volume), or at i * side / S on a resized cube."""
    side, factor = transforms.cube_geometry(tuple(shape[:3]), volume_size)
    step = factor if factor is not None else side / volume_size
    pads = np.array([(side - n) // 2 for n in shape[:3]], np.float64)
    to_input = np.eye(4)
    to_input[:3, :3] *= step
    to_input[:3, 3] = (step - 1.0) / 2.0 - pads
    return np.asarray(affine, np.float64) @ to_input


def load_subject(
    path: str | pathlib.Path, config: ml_collections.ConfigDict
) -> tuple[np.ndarray, np.ndarray, str]:
    """A NIfTI volume (X, Y, Z) or (X, Y, Z, C) -> ((S, S, S, C) float32 in the model's
    value range, the cube's affine, the subject's name); C must be the model's channels."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--input: no such NIfTI file {path}")
    try:
        image = nib.load(path)
        volume = np.asarray(image.dataobj, np.float32)
    except Exception as err:  # nibabel raises many types for unreadable files
        raise InputError(f"--input: cannot read {path} as NIfTI ({err})") from None
    if volume.ndim == 3:
        volume = volume[..., None]
    channels = int(config.data.channels)
    if volume.ndim != 4 or volume.shape[-1] != channels:
        raise InputError(
            f"--input: {path.name} has shape {volume.shape}; this model takes (X, Y, Z) "
            f"volumes with {channels} channel(s)"
        )
    size = int(config.data.volume_size)
    value_range = tuple(config.data.get("value_range", (-1.0, 1.0)))
    cube = transforms.wdm_volume(volume, size, value_range)
    name = path.name.removesuffix(".gz").removesuffix(".nii")
    return cube, cube_affine(volume.shape, image.affine, size), name


def orthogonal_tiles(volume: np.ndarray) -> list[np.ndarray]:
    """(X, Y, Z) -> its axial, coronal and sagittal mid-slices, each rotated so that
    anterior / superior point up (RAS voxel order assumed)."""
    x, y, z = (n // 2 for n in volume.shape)
    return [
        np.rot90(volume[:, :, z]),
        np.rot90(volume[:, y, :]),
        np.rot90(volume[x, :, :]),
    ]


def save_swap_panel(
    path: pathlib.Path,
    factual: np.ndarray,
    counterfactual: np.ndarray,
    heat: np.ndarray,
    *,
    labels: tuple[str, str],
    value_range: tuple[float, float],
    title: str,
) -> pathlib.Path:
    """Rows: the factual volume, the counterfactual, |difference|; columns: axial,
    coronal, sagittal mid-slices. (X, Y, Z) arrays (first channel)."""
    from jaxcf.visualization import heatmap_rgb, save_panel, to_uint8

    lo, hi = value_range
    vmax = float(max(heat.max(), 1e-6))
    rows = [
        [to_uint8(t, lo, hi) for t in orthogonal_tiles(factual)],
        [to_uint8(t, lo, hi) for t in orthogonal_tiles(counterfactual)],
        [heatmap_rgb(t, vmax) for t in orthogonal_tiles(heat)],
    ]
    return save_panel(
        rows,
        path,
        titles=["axial", "coronal", "sagittal"],
        row_labels=[*labels, f"|difference| (max {vmax:.2f})"],
        title=title,
    )


def run(
    trained: Any,
    out: pathlib.Path,
    *,
    subject: str | pathlib.Path | None = None,
    count: int = 1,
    progress: bool = True,
) -> dict:
    """Prompt swap of `count` synthetic subjects (subject None) or of one real volume;
    writes <name>_{factual,counterfactual,difference}.nii.gz (and _reconstruction and, for
    the residual edit, _decoded in real mode) and <name>_panel.png per subject to `out`;
    returns a summary."""
    config = trained.config
    if config.data.task != "volumes":
        raise InputError(
            f"prompt_swap runs on 3-D volume models; this model's data.task is {config.data.task!r}"
        )
    group = ml_collections.ConfigDict(config.counterfactual.to_dict())
    settings = group[METHOD]
    settings.mode = "synthetic" if subject is None else "real"
    runner = MethodRunner(
        trained.method_model(), trained.weights, METHOD, group, config.mesh, progress=progress
    )
    size = int(config.data.volume_size)
    value_range = tuple(config.data.get("value_range", (-1.0, 1.0)))
    if subject is None:
        if count < 1:
            raise InputError(f"--count must be >= 1, got {count}")
        images = np.zeros((count, size, size, size, int(config.data.channels)), np.float32)
        names = [f"synthetic{i:03d}" for i in range(count)]
        affine = np.eye(4)
    else:
        cube, affine, name = load_subject(subject, config)
        images, names = cube[None], [name]
    started = time.perf_counter()
    outputs = runner({"image": images})
    seconds = time.perf_counter() - started
    out.mkdir(parents=True, exist_ok=True)
    labels = (f"factual: {settings.source_prompt}", f"counterfactual: {settings.target_prompt}")
    if subject is not None:
        labels = (f"input ({settings.source_prompt})", labels[1])
    written = []
    for i, name in enumerate(names):
        for kind in ("factual", "counterfactual", "reconstruction", "decoded"):
            if kind in outputs:
                volume = outputs[kind][i]
                cases.write_volume(out / f"{name}_{kind}.nii.gz", volume[..., 0], affine)
        difference = outputs["counterfactual"][i] - outputs["factual"][i]
        cases.write_volume(out / f"{name}_difference.nii.gz", difference[..., 0], affine)
        save_swap_panel(
            out / f"{name}_panel.png",
            outputs["factual"][i][..., 0],
            outputs["counterfactual"][i][..., 0],
            np.abs(difference[..., 0]),
            labels=labels,
            value_range=value_range,
            title=f"{name}: prompt swap ({settings.mode}, w = {settings.guidance_scale:g})",
        )
        written.append(name)
    lo, hi = value_range
    kept = subject_preservation(
        outputs["factual"], outputs["counterfactual"], hi - lo, **ms_ssim_settings(size)
    )
    return {
        "method": METHOD,
        # paper 004's subject preservation, factual vs counterfactual, per subject
        "psnr": [float(v) for v in np.asarray(kept["psnr"])],
        "ms_ssim": [float(v) for v in np.asarray(kept["ms_ssim"])],
        "mode": str(settings.mode),
        "subjects": written,
        "source_prompt": str(settings.source_prompt),
        "target_prompt": str(settings.target_prompt),
        "seconds": seconds,
        "mean_abs_difference": float(
            np.mean(np.abs(outputs["counterfactual"] - outputs["factual"]))
        ),
    }
