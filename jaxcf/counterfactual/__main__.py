"""python -m jaxcf.counterfactual --config=configs/X.py --checkpoint=WORKDIR --input=CASE
    --out=DIR [--method=NAME] [--mask=FILE] [--config.counterfactual.<method>.*=...]

Segments one BraTS case (a case folder, or a 4-D NIfTI with t1, t1ce, t2, flair) by its
healthy counterfactual, with any registered method (diffscm, promptable). The network
comes from WORKDIR (its config.json and EMA weights); --config gives the method settings.
Writes, with the input's affine:
  <case>_counterfactual.nii.gz  (X, Y, Z, 4) healthy counterfactual, input intensity units
  <case>_heatmap.nii.gz         (X, Y, Z) channel mean |x - x_cf| (normalised units)
  <case>_mask.nii.gz            (X, Y, Z) uint8 tumour mask (paper 000's post-processing)
  <case>_region.nii.gz          (X, Y, Z) uint8 prompt region (methods with a prompt)
  <case>_panel.png              the slice with the largest tumour / heatmap: per modality
                                input, counterfactual, |difference|; heatmap, mask, truth

python -m jaxcf.counterfactual --method=prompt_swap --config=configs/wdm_ms.py
    --checkpoint=WORKDIR --out=DIR [--input=VOLUME.nii.gz | --count=N]
    [--config.counterfactual.prompt_swap.target_prompt="Subject has high lesion load"]

Paper 004's prompt swap on a 3-D prompt model (WDM or rectified flow): without --input, N
synthetic subjects sampled from one noise under source_prompt and target_prompt; with
--input, the volume inverted under source_prompt (its own) and decoded under the target.
Writes <name>_{factual,counterfactual,difference}.nii.gz (and, for a real subject,
_reconstruction under its own prompt and _decoded, the target decode before the default
residual edit x + decoded - reconstruction) on the model's cube, with an affine that
maps it onto the input, and <name>_panel.png (axial / coronal / sagittal mid-slices of
both and their difference).
python -m jaxcf.counterfactual --method=attention --config=configs/sd_cxr.py
    --checkpoint=WORKDIR --input=IMAGE.jpg --out=DIR [--mask=LUNGS.png] [--roi=ROI.png]
    [--config.counterfactual.attention.target_prompt="Opacity in the right lower zone"]

Paper 003's attention-regulated edit of one PA chest radiograph (JPEG / PNG) toward the
target prompt: the lung fields from --mask (non-zero = lung) or, in jaxcf's MIMIC-CXR-like
layout, from masks/<stem>_{right,left}_lung.png; the ROI from the prompt's side and zone
words (or --roi). Writes <stem>_{input,counterfactual,difference,attention,roi,panel}.png
and <stem>_summary.json (jaxcf.experiments.cxr_attention).
Exit codes: 0 done, 2 bad input (one line on stderr).
"""

from __future__ import annotations

import sys

from absl import flags

from jaxcf.cli import call, start
from jaxcf.errors import InputError

PROG = "jaxcf.counterfactual"


def _define(values: flags.FlagValues) -> None:
    flags.DEFINE_string("checkpoint", None, "Training workdir of the model.", flag_values=values)
    flags.DEFINE_string(
        "input",
        None,
        "BraTS case folder or 4-D NIfTI; for prompt_swap a volume NIfTI (a real subject, "
        "inverted) or none (synthetic subjects).",
        flag_values=values,
    )
    flags.DEFINE_string("out", None, "Output directory.", flag_values=values)
    flags.DEFINE_string(
        "method",
        None,
        "A registered method: diffscm | promptable | prompt_swap | attention (default: "
        "counterfactual.method).",
        flag_values=values,
    )
    flags.DEFINE_integer(
        "count",
        1,
        "prompt_swap without --input: how many synthetic subjects to draw.",
        flag_values=values,
    )
    flags.DEFINE_string(
        "mask",
        None,
        "Region NIfTI for prompted methods (sets counterfactual.promptable.region=file); "
        "for --method=attention the lung-field PNG of the radiograph.",
        flag_values=values,
    )
    flags.DEFINE_string(
        "roi",
        None,
        "--method=attention: a PNG of where the finding goes (default: from the prompt).",
        flag_values=values,
    )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    started = start(PROG, argv, _define, required=("checkpoint", "out"), usage=__doc__)
    if isinstance(started, int):
        return started
    config, values = started
    method = values.method or config.counterfactual.method

    def swap() -> dict:
        from jaxcf.counterfactual import cases
        from jaxcf.experiments import prompt_swap
        from jaxcf.inference import load_trained

        out = cases.output_dir(values.out, "--out")
        trained = load_trained(values.checkpoint, config)
        return prompt_swap.run(trained, out, subject=values.input, count=values.count)

    def radiograph() -> dict:
        from jaxcf.counterfactual import cases
        from jaxcf.experiments import cxr_attention
        from jaxcf.inference import load_trained

        if not values.input:
            raise InputError("--input is required for --method=attention (a radiograph)")
        out = cases.output_dir(values.out, "--out")
        image = cxr_attention.load_radiograph(values.input, values.mask, values.roi)
        trained = load_trained(values.checkpoint, config)
        return cxr_attention.run(trained, image, out)

    def run() -> dict:
        from jaxcf.counterfactual import cases, registry
        from jaxcf.experiments import segmentation
        from jaxcf.inference import load_trained

        registry.get(method)  # an unknown name fails here, before any work
        if method == "prompt_swap":
            return swap()
        if method == "attention":
            return radiograph()
        if not values.input:
            raise InputError(f"--input is required for --method={method}")
        out = cases.output_dir(values.out, "--out")
        case = cases.load_case(values.input)
        mask = cases.read_mask(values.mask, case.image.shape[:3]) if values.mask else None
        trained = load_trained(values.checkpoint, config)
        segmentation.check_settings(trained.config)
        if mask is not None and "region" in trained.config.counterfactual[method]:
            trained.config.counterfactual[method].region = "file"
        return segmentation.segment_case(
            segmentation.method_runner(trained, method),
            case,
            out,
            image_size=int(trained.config.data.image_size),
            vote=str(trained.config.counterfactual.vote),
            mask=mask,
        )

    code, summary = call(PROG, run)
    if code:
        return code
    if summary.get("method") == "prompt_swap":
        import numpy as np

        print(
            f"prompt_swap ({summary['mode']}): {len(summary['subjects'])} subject(s), "
            f"{summary['source_prompt']!r} -> {summary['target_prompt']!r} in "
            f"{summary['seconds']:.1f} s, mean |difference| {summary['mean_abs_difference']:.4f}, "
            f"subject PSNR {np.mean(summary['psnr']):.2f} dB, MS-SSIM "
            f"{np.mean(summary['ms_ssim']):.4f}; wrote {values.out}"
        )
        return 0
    if summary.get("method") == "attention":
        print(
            f"{summary['input']}: {summary['label']} toward {summary['target_prompt']!r} "
            f"(ROI: {summary['roi']}) in {summary['seconds']:.1f} s; SSIM {summary['ssim']:.3f}, "
            f"{summary['outside_roi']:.1%} of |difference| outside the ROI, "
            f"{summary['outside_lungs']:.1%} outside the lungs; wrote {values.out}"
        )
        return 0
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
