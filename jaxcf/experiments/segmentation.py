"""Counterfactual segmentation of BraTS slices: a trained label model, any registered
method, paper 000's post-processing, NIfTI cases and the papers' Table 1 over a split.
Shared by `python -m jaxcf.counterfactual`, `python -m jaxcf.evaluate` and the demo.

    trained = load_trained(workdir, config)
    runner = method_runner(trained, "diffscm")
    summary = segment_case(runner, load_case(path), out_dir, image_size=32, vote="paper")
    record = evaluate(trained, workdir, "test", out_dir)
"""

from __future__ import annotations

import json
import pathlib
import time
from typing import Any

import numpy as np

from jaxcf.counterfactual import cases, registry
from jaxcf.counterfactual.prompts import brain_masks
from jaxcf.counterfactual.runner import MethodRunner
from jaxcf.data import transforms
from jaxcf.errors import InputError
from jaxcf.evaluation import benchmark, postprocess
from jaxcf.evaluation.metrics import case_metrics

SLICES = ("tumour", "all")


def check_settings(config: Any, *, evaluating: bool = False) -> None:
    """Refuse bad segmentation settings before any data or compute (InputError naming the
    field): the vote rule, the model's data (2-D slices), and for an evaluation the slice
    filter, the methods, and prompts that need a per-case file."""
    if config.counterfactual.vote not in postprocess.VOTE_RULES:
        raise InputError(
            f"counterfactual.vote must be one of {list(postprocess.VOTE_RULES)}, got "
            f"{config.counterfactual.vote!r}"
        )
    if config.data.task != "slices2d":
        raise InputError(
            f"counterfactual segmentation runs on 2-D BraTS slice models; this model's "
            f"data.task is {config.data.task!r}"
        )
    if not evaluating:
        return
    if config.eval.slices not in SLICES:
        raise InputError(f"eval.slices must be one of {SLICES}, got {config.eval.slices!r}")
    methods = eval_methods(config)
    region = config.counterfactual.get("promptable", {}).get("region")
    if "promptable" in methods and region == "file":
        raise InputError(
            "counterfactual.promptable.region=file needs a region file per case, which an "
            "evaluation over a split has none of: use box, seg or brain"
        )


def method_runner(trained: Any, name: str, *, progress: bool = True) -> MethodRunner:
    """The registered method `name` on a TrainedModel, with its config's settings
    (counterfactual.<name>.*, counterfactual.batch_size / seed) and mesh."""
    config = trained.config
    return MethodRunner(
        trained.method_model(),
        trained.weights,
        name,
        config.counterfactual,
        config.mesh,
        progress=progress,
    )


def slice_masks(images: np.ndarray, counterfactuals: np.ndarray, vote: str) -> np.ndarray:
    """Paper 000's post-processing per slice: (B, S, S, C) pairs -> (B, S, S) bool masks."""
    brain = brain_masks(images)
    return np.stack(
        [
            postprocess.segment_from_counterfactual(x, cf, brain_mask=b, vote_rule=vote)
            if b.any()
            else np.zeros(b.shape, bool)
            for x, cf, b in zip(images, counterfactuals, brain, strict=True)
        ]
    )


def segment_slices(
    runner: MethodRunner, batch: dict, vote: str, *, key_offset: int = 0
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Run a method on {"image" (B, S, S, C), optional "seg" / "given_region"} and turn
    its counterfactuals into tumour masks; a method's prompt region bounds the masks.
    A method that makes no heatmap gets the channel mean of |x - x_cf|."""
    out = runner(batch, key_offset=key_offset)
    if "heatmap" not in out:
        out["heatmap"] = np.abs(batch["image"] - out["counterfactual"]).mean(-1)
    masks = slice_masks(batch["image"], out["counterfactual"], vote)
    if "region" in out:  # the prompt bounds where a tumour may be found
        masks &= out["region"] > 0
    return out, masks


def segment_case(
    runner: MethodRunner,
    case: cases.Case,
    out_dir: pathlib.Path,
    *,
    image_size: int,
    vote: str,
    mask: np.ndarray | None = None,
) -> dict:
    """Run a method on every brain slice of a Case; write NIfTI (the case's affine) and a
    PNG panel to out_dir; return a summary (with volume Dice when the case has a seg)."""
    slices = cases.case_slices(case, image_size)
    batch = {"image": slices.image, "seg": slices.seg}
    if mask is not None:
        batch["given_region"] = np.stack(
            [
                transforms.resize_labels(
                    transforms.pad_to_square(mask[:, :, k].astype(np.uint8)),
                    (image_size, image_size),
                )
                for k in slices.z
            ]
        ).astype(bool)
    started = time.perf_counter()
    out, masks = segment_slices(runner, batch, vote)
    seconds = time.perf_counter() - started

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
    if "region" in out:
        region = slices.to_volume((out["region"] > 0).astype(np.float32), order=0)
        cases.write_volume(out_dir / f"{name}_region.nii.gz", region.astype(np.uint8), case.affine)

    from jaxcf.visualization import save_case_panel

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
        "method": runner.name,
        "slices": len(slices.z),
        "panel_slice": int(slices.z[k]),
        "seconds": seconds,
    }
    if case.seg is not None:
        summary["volume_metrics"] = case_metrics(mask_volume > 0, case.seg > 0)
    (out_dir / f"{name}_summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def eval_methods(config: Any) -> list[str]:
    """eval.methods as a list of registered names (ValueError naming the field)."""
    methods = [m.strip() for m in str(config.eval.methods).split(",") if m.strip()]
    unknown = sorted(set(methods) - set(registry.names()))
    if unknown:
        raise InputError(f"eval.methods: unknown {unknown}; known: {list(registry.names())}")
    return methods


def evaluate(
    trained: Any, workdir: pathlib.Path, split: str, out: pathlib.Path, *, progress: bool = True
) -> dict:
    """Evaluate eval.methods of a TrainedModel on a split of its data (plus the FLAIR
    thresholding baseline); write metrics.json / metrics.md / example panels to out."""
    from jaxcf.training.data import ensure_data
    from jaxcf.visualization import save_case_panel

    config = trained.config
    check_settings(config, evaluating=True)
    methods = eval_methods(config)
    data_config = ensure_data(config.data, workdir)
    bins = int(config.eval.num_bins)
    vote = str(config.counterfactual.vote)
    threshold = benchmark.choose_baseline_threshold(data_config, "val", config.eval.slices, bins)
    runners = {name: method_runner(trained, name, progress=False) for name in methods}

    def segmenter(runner: MethodRunner):
        done = [0]  # rows run so far: each batch gets its own keys

        def run(batch: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            out, masks = segment_slices(runner, batch, vote, key_offset=done[0])
            done[0] += len(batch["image"])
            return out["counterfactual"], out["heatmap"], masks

        return run

    results, examples = benchmark.evaluate_split(
        {name: segmenter(runner) for name, runner in runners.items()},
        data_config,
        split,
        batch_size=max(runner.chunk for runner in runners.values()) if runners else 32,
        slices=config.eval.slices,
        max_items=int(config.eval.max_items),
        bins=bins,
        baseline_threshold=threshold,
        progress=progress,
    )
    out.mkdir(parents=True, exist_ok=True)
    title = (
        f"Counterfactual segmentation, {split} split, {int(results['threshold']['slices'])} "
        f"{'tumour ' if config.eval.slices == 'tumour' else ''}slices (model step {trained.step})"
    )
    labels = {name: runner.label for name, runner in runners.items()}
    table = benchmark.results_table(results, title, labels)
    (out / "metrics.md").write_text(table)
    record = {"split": split, "step": trained.step, "results": results}
    (out / "metrics.json").write_text(json.dumps(record, indent=2))
    for i, example in enumerate(examples):
        for name, (cf, heat, mask) in example.outputs.items():
            if cf is not None:
                save_case_panel(
                    out / f"example{i}_{name}.png", example.image, cf, heat, mask, example.truth
                )
    return {"table": table, **record}
