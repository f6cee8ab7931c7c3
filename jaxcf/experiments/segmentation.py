"""Counterfactual segmentation of BraTS slices: a trained label model, any registered
method, paper 000's post-processing, NIfTI cases and the papers' Table 1 over a split.
Shared by `python -m jaxcf.counterfactual`, `python -m jaxcf.evaluate` and the demo.

    trained = load_trained(workdir, config)
    runner = method_runner(trained, "diffscm")
    summary = segment_case(runner, load_case(path), out_dir, image_size=32, vote="paper")
    record = evaluate(trained, workdir, "test", out_dir)
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import time
from typing import Any

import ml_collections
import numpy as np

from jaxcf.counterfactual import cases, promptable, registry
from jaxcf.counterfactual.prompts import brain_masks
from jaxcf.counterfactual.runner import MethodRunner
from jaxcf.data import transforms
from jaxcf.errors import InputError
from jaxcf.evaluation import benchmark, postprocess
from jaxcf.evaluation.metrics import case_metrics
from jaxcf.experiments import calibration

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
    size = config.eval.get("image_size", 0)
    if not isinstance(size, int) or size < 0:
        raise InputError(
            f"eval.image_size must be 0 (the model's data.image_size) or a positive side in "
            f"pixels, got {size!r}"
        )
    for method in eval_methods(config):
        if method_settings(config, method).get("region") == "file":
            raise InputError(
                f"eval.methods {method.entry!r}: counterfactual.{method.name}.region=file needs "
                "a region file per case, which an evaluation over a split has none of: use "
                "box, heatmap_box, seg or brain"
            )


@dataclasses.dataclass(frozen=True)
class EvalMethod:
    """One row of an evaluation: a registered method with settings of its own.

    entry: as written in eval.methods ("promptable:region=heatmap_box"); name: the
    registered method; overrides: counterfactual.<name>.<field> values for this row only;
    key: the row's name in metrics.json and file names ("promptable_heatmap_box")."""

    entry: str
    name: str
    overrides: tuple[tuple[str, Any], ...] = ()

    @property
    def key(self) -> str:
        return "_".join([self.name, *(str(value) for _, value in self.overrides)])


def _typed(text: str, like: Any, where: str) -> Any:
    """eval.methods text for a field whose default is `like` -> a value of like's type."""
    try:
        if isinstance(like, bool):
            if text.lower() not in ("true", "false"):
                raise ValueError(text)
            return text.lower() == "true"
        if isinstance(like, int | float):
            return type(like)(text)
    except ValueError:
        raise InputError(f"{where}: {text!r} is not of type {type(like).__name__}") from None
    return text


def parse_method(entry: str, config: Any) -> EvalMethod:
    """An eval.methods entry, NAME or NAME:FIELD=VALUE[:FIELD=VALUE...] -> EvalMethod
    (InputError naming eval.methods for an unknown method or field, or a value of the
    wrong type)."""
    name, *settings = (part.strip() for part in entry.split(":"))
    if name not in registry.names():
        raise InputError(f"eval.methods: unknown {name!r}; known: {list(registry.names())}")
    defaults = config.counterfactual.get(name) or registry.get(name).default_config()
    overrides = []
    for setting in settings:
        field, sep, value = (part.strip() for part in setting.partition("="))
        if not sep or field not in defaults:
            raise InputError(
                f"eval.methods {entry!r}: expected {name}:FIELD=VALUE with FIELD one of "
                f"counterfactual.{name}.{{{', '.join(defaults)}}}, got {setting!r}"
            )
        overrides.append((field, _typed(value, defaults[field], f"eval.methods {entry!r}")))
    return EvalMethod(entry, name, tuple(overrides))


def eval_methods(config: Any) -> list[EvalMethod]:
    """eval.methods (comma-separated entries, see parse_method) as EvalMethods; InputError
    naming the field for unknown names, bad settings or two rows with the same key."""
    entries = [m.strip() for m in str(config.eval.methods).split(",") if m.strip()]
    methods = [parse_method(entry, config) for entry in entries]
    keys = [m.key for m in methods]
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        raise InputError(f"eval.methods: {repeated} appear more than once")
    return methods


def method_settings(config: Any, method: EvalMethod) -> ml_collections.ConfigDict:
    """counterfactual.<name> of the config with the row's overrides applied (a copy)."""
    group = config.counterfactual.get(method.name) or registry.get(method.name).default_config()
    settings = ml_collections.ConfigDict(group.to_dict())
    settings.update(dict(method.overrides))
    return settings


def method_runner(
    trained: Any,
    name: str | EvalMethod,
    *,
    progress: bool = True,
    calibrate: bool = True,
    calibration_progress: bool | None = None,
) -> MethodRunner:
    """The registered method `name` (or an eval.methods row: the method with its
    overrides) on a TrainedModel, with its config's settings (counterfactual.<name>.*,
    counterfactual.batch_size / seed) and mesh. calibrate: set region=heatmap_box's
    detection level from the validation split (calibration.calibrated; a first pass over
    it unless cached; its bar shows when calibration_progress, default progress); False
    only checks the settings."""
    config = trained.config
    method = name if isinstance(name, EvalMethod) else EvalMethod(name, name)
    counterfactual = ml_collections.ConfigDict(config.counterfactual.to_dict())
    settings = method_settings(config, method)
    if calibrate:
        shown = progress if calibration_progress is None else calibration_progress
        settings = calibration.calibrated(trained, settings, progress=shown)
    counterfactual[method.name] = settings
    return MethodRunner(
        trained.method_model(),
        trained.weights,
        method.name,
        counterfactual,
        config.mesh,
        progress=progress,
    )


def eval_image_size(config: Any) -> int:
    """The evaluation grid's side: eval.image_size, or the model's data.image_size."""
    return int(config.eval.get("image_size", 0) or 0) or int(config.data.image_size)


def eval_data(config: Any, workdir: pathlib.Path) -> Any:
    """The data config of the evaluation grid, its shards on disk (ensure_data). A grid
    other than the model's gets shards of its own, prepared from the same cases (root) with
    the same preprocessing at eval.image_size, beside the model's: <prepared>_<size>px."""
    from jaxcf.training.data import ensure_data

    data = config.data.copy_and_resolve_references()
    size = eval_image_size(config)
    if size != int(data.image_size):
        prepared = data.prepared or str(workdir / "prepared" / f"{data.dataset}_{data.task}")
        data.image_size = size
        data.prepared = f"{prepared}_{size}px"
    return ensure_data(data, workdir)


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
        case_id=name,
        slice_index=int(slices.z[k]),
        method=runner.label,
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


def first_pass_sources(runners: dict[str, MethodRunner]) -> dict[str, str]:
    """{heatmap_box row: an earlier Diff-SCM row whose settings are its first pass's}."""
    sources = {}
    for key, runner in runners.items():
        if runner.name != "promptable" or runner.cfg.get("region") != "heatmap_box":
            continue
        first = promptable.first_pass_config(runner.cfg).to_dict()
        for other, candidate in runners.items():
            if other == key:
                break
            if candidate.name == "diffscm" and candidate.cfg.to_dict() == first:
                sources[key] = other
                break
    return sources


def calibration_note(label: str, record: dict) -> str:
    """One line under the table: where a calibrated row's detection level came from."""
    return (
        f"\n{label}: a box where the first pass's heat peaks >= {record['level']:.3g}, the "
        f"level that best tells the {record['split']} split's {record['slices']} slices with "
        f"and without tumour apart (accuracy {100 * record['accuracy']:.1f}%, sensitivity "
        f"{100 * record['sensitivity']:.1f}%, specificity {100 * record['specificity']:.1f}%).\n"
    )


def evaluate(
    trained: Any, workdir: pathlib.Path, split: str, out: pathlib.Path, *, progress: bool = True
) -> dict:
    """Evaluate eval.methods of a TrainedModel on a split of its data (plus the FLAIR
    thresholding baseline); write metrics.json / metrics.md / example panels to out.

    The split is scored on the evaluation grid (eval.image_size; eval_data), the methods
    run on the model's (data.image_size), their maps resampled (benchmark.on_model_grid)."""
    from jaxcf.evaluation.reports import write_reports
    from jaxcf.visualization import save_case_panel

    config = trained.config
    check_settings(config, evaluating=True)
    # Every method's settings first: a bad one fails before any data or calibration work.
    for method in eval_methods(config):
        method_runner(trained, method, progress=False, calibrate=False)
    runners = {
        m.key: method_runner(trained, m, progress=False, calibration_progress=progress)
        for m in eval_methods(config)
    }
    data_config = eval_data(config, workdir)
    model_size, grid = int(config.data.image_size), eval_image_size(config)
    bins = int(config.eval.num_bins)
    vote = str(config.counterfactual.vote)
    threshold = benchmark.choose_baseline_threshold(data_config, "val", config.eval.slices, bins)

    # A heatmap_box row whose first pass is a Diff-SCM row's settings takes that row's
    # heatmap of the same batch instead of running the pass again (DDIM is deterministic).
    shared: dict[str, tuple[int, np.ndarray]] = {}
    sources = first_pass_sources(runners)

    def segmenter(key: str, runner: MethodRunner):
        done = [0]  # rows run so far: each batch gets its own keys

        def run(batch: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            source = shared.get(sources.get(key, ""))
            if source is not None and source[0] == done[0]:
                batch = {**batch, "first_heatmap": source[1]}
            out, masks = segment_slices(runner, batch, vote, key_offset=done[0])
            if key in sources.values():
                shared[key] = (done[0], out["heatmap"])
            done[0] += len(batch["image"])
            return out["counterfactual"], out["heatmap"], masks

        return run

    slice_rows: list[dict] = []  # one per (method, slice): the per_slice / per_case reports
    results, examples = benchmark.evaluate_split(
        {name: segmenter(name, runner) for name, runner in runners.items()},
        data_config,
        split,
        batch_size=max(runner.chunk for runner in runners.values()) if runners else 32,
        slices=config.eval.slices,
        max_items=int(config.eval.max_items),
        bins=bins,
        baseline_threshold=threshold,
        model_size=model_size,
        progress=progress,
        records=slice_rows,
    )
    out.mkdir(parents=True, exist_ok=True)
    kind = "tumour slices" if config.eval.slices == "tumour" else "slices (all)"
    scale = f", methods at {model_size} px" if grid != model_size else ""
    title = (
        f"Counterfactual segmentation, {split} split, {int(results['threshold']['slices'])} "
        f"{kind} at {grid} px{scale} (model step {trained.step})"
    )
    labels = {name: runner.label for name, runner in runners.items()}
    table = benchmark.results_table(results, title, labels)
    calibrations = {
        key: runner.cfg.calibration.to_dict()
        for key, runner in runners.items()
        if "calibration" in runner.cfg
    }
    table += "".join(calibration_note(labels[k], c) for k, c in calibrations.items())
    (out / "metrics.md").write_text(table)
    reports = {k: p.name for k, p in write_reports(slice_rows, out).items()}
    panels = []
    for i, ex in enumerate(examples):
        for name, (cf, heat, mask) in ex.outputs.items():
            if cf is not None:
                png = f"example{i}_{ex.case_id}_z{ex.slice_index}_{name}.png"
                ids = {"case_id": ex.case_id, "slice_index": ex.slice_index, "method": labels[name]}
                save_case_panel(out / png, ex.image, cf, heat, mask, ex.truth, **ids)
                panels.append({"file": png, **ids})
    record = {
        "split": split,
        "step": trained.step,
        "slices": str(config.eval.slices),
        "image_size": grid,
        "model_image_size": model_size,
        "methods": {key: runner.label for key, runner in runners.items()},
        "results": results,
    }
    record.update(reports=reports, panels=panels, calibration=calibrations)
    (out / "metrics.json").write_text(json.dumps(record, indent=2))
    return {"table": table, **record}
