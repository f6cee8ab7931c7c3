"""python -m jaxcf.counterfactual --config=configs/X.py --checkpoint=WORKDIR --input=CASE
    --out=DIR [--method=diffscm|promptable] [--mask=FILE] [--config.counterfactual.*=...]

Segments one BraTS case (a case folder, or a 4-D NIfTI with t1, t1ce, t2, flair) by its
healthy counterfactual. Writes, with the input's affine:
  <case>_counterfactual.nii.gz  (X, Y, Z, 4) healthy counterfactual, input intensity units
  <case>_heatmap.nii.gz         (X, Y, Z) channel mean |x - x_cf| (normalised units)
  <case>_mask.nii.gz            (X, Y, Z) uint8 tumour mask (paper 000's post-processing)
  <case>_region.nii.gz          (X, Y, Z) uint8 prompt region (promptable only)
  <case>_panel.png              the slice with the largest tumour / heatmap: per modality
                                input, counterfactual, |difference|; heatmap, mask, truth
Exit codes: 0 done, 2 bad input (one line on stderr).
"""

from __future__ import annotations

import json
import pathlib
import sys
import time

import numpy as np
from absl import flags

from jaxcf.cli import call, start

PROG = "jaxcf.counterfactual"


def _define(values: flags.FlagValues) -> None:
    flags.DEFINE_string("checkpoint", None, "Training workdir of the model.", flag_values=values)
    flags.DEFINE_string("input", None, "BraTS case folder or 4-D NIfTI.", flag_values=values)
    flags.DEFINE_string("out", None, "Output directory.", flag_values=values)
    flags.DEFINE_string(
        "method", None, "diffscm | promptable (default: counterfactual.method).", flag_values=values
    )
    flags.DEFINE_string(
        "mask", None, "Region NIfTI for promptable (sets region=file).", flag_values=values
    )


def segment_case(segmenter, case, method: str, out_dir: pathlib.Path, mask=None) -> dict:
    """Run one method on every brain slice of a Case; write NIfTI + PNG; return a summary."""
    from jaxcf.counterfactual import cases
    from jaxcf.counterfactual.segment import prompt_regions
    from jaxcf.data import transforms
    from jaxcf.evaluation.metrics import case_metrics
    from jaxcf.visualization import save_case_panel

    options = segmenter.options
    size = int(segmenter.trained.config.data.image_size)
    slices = cases.case_slices(case, size)
    regions = None
    if method == "promptable":
        given = None
        if mask is not None:
            given = np.stack(
                [
                    transforms.resize_labels(
                        transforms.pad_to_square(mask[:, :, k].astype(np.uint8)), (size, size)
                    )
                    for k in slices.z
                ]
            ).astype(bool)
        kind = "file" if mask is not None else options.region
        regions = prompt_regions(kind, slices.image, slices.seg, int(options.box_margin), given)
    started = time.perf_counter()
    out = segmenter.run(method, slices.image, regions)
    seconds = time.perf_counter() - started
    masks = segmenter.masks(slices.image, out["counterfactual"])
    if regions is not None:  # the prompt bounds where a tumour may be found
        masks &= regions

    name = case.case_id
    out_dir.mkdir(parents=True, exist_ok=True)
    counterfactual = slices.to_intensity(slices.to_volume(out["counterfactual"], fill=-1.0))
    # Slices the model did not see keep the input.
    unseen = np.setdiff1d(np.arange(case.image.shape[2]), slices.z)
    counterfactual[:, :, unseen] = case.image[:, :, unseen]
    cases.write_volume(out_dir / f"{name}_counterfactual.nii.gz", counterfactual, case.affine)
    cases.write_volume(
        out_dir / f"{name}_heatmap.nii.gz", slices.to_volume(out["heatmap"]), case.affine
    )
    mask_volume = slices.to_volume(masks.astype(np.float32), order=0).astype(np.uint8)
    cases.write_volume(out_dir / f"{name}_mask.nii.gz", mask_volume, case.affine)
    if regions is not None:
        region_volume = slices.to_volume(regions.astype(np.float32), order=0).astype(np.uint8)
        cases.write_volume(out_dir / f"{name}_region.nii.gz", region_volume, case.affine)

    truth = slices.seg > 0 if slices.seg is not None else None
    score = truth.sum(axis=(1, 2)) if truth is not None else out["heatmap"].sum(axis=(1, 2))
    k = int(np.argmax(score))
    save_case_panel(
        out_dir / f"{name}_panel.png",
        slices.image[k],
        out["counterfactual"][k],
        out["heatmap"][k],
        masks[k],
        truth[k] if truth is not None else None,
    )
    summary = {
        "case": name,
        "method": method,
        "slices": len(slices.z),
        "panel_slice": int(slices.z[k]),
        "seconds": seconds,
    }
    if case.seg is not None:
        summary["volume_metrics"] = case_metrics(mask_volume > 0, case.seg > 0)
    (out_dir / f"{name}_summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    started = start(PROG, argv, _define, required=("checkpoint", "input", "out"))
    if isinstance(started, int):
        return started
    config, values = started
    method = values.method or config.counterfactual.method

    def run() -> dict:
        from jaxcf.counterfactual import cases
        from jaxcf.counterfactual.segment import METHODS, Segmenter
        from jaxcf.inference import load_trained

        if method not in METHODS:
            raise ValueError(f"--method must be one of {METHODS}, got {method!r}")
        case = cases.load_case(values.input)
        mask = cases.read_mask(values.mask, case.image.shape[:3]) if values.mask else None
        trained = load_trained(values.checkpoint, config)
        segmenter = Segmenter(trained, trained.config.counterfactual)
        return segment_case(segmenter, case, method, pathlib.Path(values.out), mask)

    code, summary = call(PROG, run)
    if code:
        return code
    line = (
        f"{summary['case']}: {method} on {summary['slices']} slices in {summary['seconds']:.1f} s"
    )
    if "volume_metrics" in summary:
        m = summary["volume_metrics"]
        line += f"; Dice {m['dice']:.3f}, IoU {m['iou']:.3f} against the case's seg"
    print(line + f"; wrote {values.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
