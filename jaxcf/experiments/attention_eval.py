"""Paper 003's ablation (Table 2) of the attention-regulated CXR edit on a trained model,
for `python -m jaxcf.evaluate --method=attention`.

    summary = evaluate(trained, workdir, "test", out)

Inputs: the normal radiographs of the split (label 0; at most eval.max_items when > 0), each
asked for an opacity in one lung zone by eval.target_template ("Moderate opacity in the
{side} {zone} zone, concerning for pneumonia."), the six (side, zone) pairs in turn
(patient right / left, upper / middle / lower). M_ROI comes from the prompt's cues (or, with
eval.roi_template, from those words filled the same way: a target that names only the side
with an ROI that names the zone) and the radiograph's lung masks
(jaxcf.counterfactual.cxr_roi); M_anat is the lung fields.

Rows, every one from the same noise with counterfactual.attention's other settings:
  Plain prompt edit    the same DDIM + CFG edit with all three mechanisms off (the baseline)
  full                 Eqs. 5, 6 and 9
  w/o Eq. 5 / 6 / 9    one mechanism off (the paper's Table 2)
and, for latent models, the SSIM of the input through the VAE alone (the best any edit can
keep).

Columns (jaxcf.evaluation.localization; mean over inputs): SSIM to the input (data range 2),
and of the change the edit made (x' minus the input, or for a latent model minus the input
through its VAE: the VAE's own loss is no edit, and would otherwise dominate every row)
the share of the |difference| outside the ROI and outside the lungs, the ROI hit rate (the
strongest added density lies in the ROI; by chance ~ the ROI's share of the lungs, which is
reported), the ROI gain (mean x' - x inside the ROI minus in the rest of the lungs; > 0:
opacity was added where asked), Eq. 8's energy L at the end (1 - the pathology tokens'
attention share in Omega), and with a classifier run (configs/classifier_cxr.py) paper
003's Conf: its mean probability of an opacity (label 1) on the counterfactuals. Writes
metrics.json, metrics.md and panel_<i>.png (one row per setting) for the first inputs.
"""

from __future__ import annotations

import pathlib
import time
from collections.abc import Callable
from typing import Any

import ml_collections
import numpy as np

from jaxcf.counterfactual import cxr_roi
from jaxcf.counterfactual.runner import MethodRunner
from jaxcf.data.text import known_prompt_tokens
from jaxcf.errors import InputError
from jaxcf.evaluation.image_metrics import ssim
from jaxcf.evaluation.localization import edit_localization
from jaxcf.evaluation.metrics import markdown_table
from jaxcf.evaluation.reports import write_summary
from jaxcf.experiments.cxr_attention import METHOD, PANEL_TITLES, panel_tiles
from jaxcf.experiments.prompt_swap_eval import split_arrays
from jaxcf.visualization import save_panel

TARGETS = tuple((side, zone) for zone in cxr_roi.ZONES for side in cxr_roi.SIDES)
PLAIN = "Plain prompt edit (no regulation)"
# (row label, the settings it switches off)
ROWS: tuple[tuple[str | None, dict[str, bool]], ...] = (
    (PLAIN, {"gate": False, "reweight": False, "energy": False}),
    (None, {}),
    (None, {"gate": False}),
    (None, {"reweight": False}),
    (None, {"energy": False}),
)
METRICS = ("ssim", "outside_roi", "outside_lungs", "roi_hit", "roi_gain", "energy", "conf")
COLUMNS = {
    "conf": "Conf",
    "ssim": "SSIM",
    "outside_roi": "|diff| outside ROI",
    "outside_lungs": "|diff| outside lungs",
    "roi_hit": "ROI hit",
    "roi_gain": "ROI gain",
    "energy": "L (Eq. 8)",
}
PANELS = 2


def targets(count: int, template: str, field: str = "eval.target_template") -> list[str]:
    """`count` target prompts: template.format(side=, zone=) over TARGETS in turn (field:
    the config field it came from, for the error)."""
    try:
        return [
            template.format(side=side, zone=zone)
            for side, zone in (TARGETS[i % len(TARGETS)] for i in range(count))
        ]
    except (KeyError, IndexError, ValueError) as err:
        raise InputError(
            f"{field} {template!r}: only {{side}} and {{zone}} may be filled ({err})"
        ) from None


def _settings(config: Any, off: dict[str, bool], prompt: str) -> ml_collections.ConfigDict:
    """counterfactual.* with `off` switched off; target_prompt (checked by build, replaced
    per row by the batch's prompts) set to one of the evaluation's."""
    group = ml_collections.ConfigDict(config.counterfactual.to_dict())
    group[METHOD].update(off)
    group[METHOD].target_prompt = prompt
    return group


def _row_scores(images, reference, result, masks, lungs) -> dict[str, float]:
    """SSIM to the input; where the change from `reference` went (localization)."""
    scores = edit_localization(reference, result["counterfactual"], masks["roi"], lungs)
    out = {k: float(np.mean(v)) for k, v in scores.items()}
    out["ssim"] = float(np.mean(np.asarray(ssim(images, result["counterfactual"], 2.0))))
    if "energy" in result:
        out["energy"] = float(np.mean(result["energy"]))
    return out


def evaluate(
    trained: Any,
    workdir: pathlib.Path,
    split: str,
    out: pathlib.Path,
    *,
    classifier: Callable[[np.ndarray], np.ndarray] | None = None,
    progress: bool = True,
) -> dict:
    """The ablation table of the module docstring -> out/metrics.json, metrics.md, panels.
    classifier: images (N, S, S, 1) -> (N, classes) probabilities (the Conf column)."""
    from jaxcf.experiments.segmentation import eval_data

    config = trained.config
    if config.data.task != "cxr" or config.diffusion.condition != "prompt":
        raise InputError(
            "evaluate --method=attention needs a prompt-conditioned CXR model (data.task='cxr',"
            f" diffusion.condition='prompt'); this model has data.task={config.data.task!r}, "
            f"diffusion.condition={config.diffusion.condition!r}"
        )
    started = time.perf_counter()
    data = split_arrays(eval_data(config, workdir), split, ("image", "label", "masks"))
    normal = np.flatnonzero(data["label"] == 0)
    if int(config.eval.max_items) > 0:
        normal = normal[: int(config.eval.max_items)]
    if len(normal) == 0:
        raise InputError(f"the {split} split holds no normal radiograph (label 0) to edit")
    images = data["image"][normal]
    left, right = data["masks"][normal, ..., 0] > 0, data["masks"][normal, ..., 1] > 0
    lungs = left | right
    prompts = targets(len(normal), str(config.eval.target_template))
    roi_template = str(config.eval.roi_template)
    roi_words = targets(len(normal), roi_template, "eval.roi_template") if roi_template else prompts
    masks = cxr_roi.method_masks(right, left, roi_words)
    model = trained.method_model()
    tokens = known_prompt_tokens(model.tokenizer, prompts, "evaluation target prompts")
    batch = {
        "image": images,
        **masks,
        "target_prompt_ids": tokens["prompt_ids"],
        "target_prompt_mask": tokens["prompt_mask"],
    }
    results: dict[str, dict[str, float]] = {}
    examples: list[tuple[str, dict]] = []
    # A latent model cannot keep what its VAE loses: the change an edit made is measured
    # from the input's round trip, which would otherwise fill every row's |difference|.
    latent = trained.space == "latent"
    reference = trained.autoencode(images) if latent else images
    for label, off in ROWS:
        group = _settings(config, off, prompts[0])
        runner = MethodRunner(model, trained.weights, METHOD, group, config.mesh, progress=progress)
        name = label or runner.label
        result = runner(batch)
        results[name] = _row_scores(images, reference, result, masks, lungs)
        if classifier is not None:
            results[name]["conf"] = float(np.mean(classifier(result["counterfactual"])[:, 1]))
        examples.append((name, {k: v[:PANELS] for k, v in result.items()}))
    if latent:
        results["Input through the VAE (no edit)"] = {
            "ssim": float(np.mean(np.asarray(ssim(images, reference, 2.0))))
        }
    if classifier is not None:
        results["Input (no edit)"] = {"conf": float(np.mean(classifier(images)[:, 1]))}
    roi_share = float(np.mean(masks["roi"].sum((1, 2)) / lungs.sum((1, 2))))
    panels = []
    for i in range(min(PANELS, len(normal))):
        rows = [
            panel_tiles(
                images[i, ..., 0],
                result["counterfactual"][i, ..., 0],
                result["attention"][i],
                masks["roi"][i] > 0,
                reference[i, ..., 0],
            )
            for _, result in examples
        ]
        path = out / f"panel_{i}.png"
        save_panel(rows, path, PANEL_TITLES, row_labels=[n for n, _ in examples],
                   title=f"{prompts[i]!r}")  # fmt: skip
        panels.append(path.name)
    settings = config.counterfactual[METHOD]
    summary = {
        "method": METHOD,
        "split": split,
        "inputs": len(normal),
        "prompts": prompts,
        "roi_from": roi_words if roi_words is not prompts else "the prompts",
        "roi_share_of_lungs": roi_share,
        "change_from": "the input through the VAE" if latent else "the input",
        "settings": {
            k: settings[k]
            for k in ("num_steps", "strength", "guidance_scale", "eta", "mu", "alpha", "window")
        },
        "results": results,
        "panels": panels,
        "seconds": time.perf_counter() - started,
    }
    return write_summary(summary, markdown(summary), out)


def markdown(summary: dict) -> str:
    """The ablation table (paper 003 Table 2 layout, plus the baseline rows)."""
    s = summary["settings"]
    title = (
        f"Attention regulation ablation, {summary['split']} split: {summary['inputs']} normal "
        f"radiographs, DDIM {s['num_steps']} steps from strength {s['strength']}, w = "
        f"{s['guidance_scale']}; ROI = {summary['roi_share_of_lungs']:.1%} of the lungs "
        f"(the hit rate of a random spot); change measured from {summary['change_from']}, "
        "SSIM to the input"
    )
    results = {
        name: {COLUMNS[k]: v for k, v in row.items() if k in COLUMNS}
        for name, row in summary["results"].items()
    }
    shown = [COLUMNS[m] for m in METRICS if any(COLUMNS[m] in r for r in results.values())]
    return markdown_table(results, shown, title, percent=False, digits=3)
