"""Paper 004's evaluation of prompt swaps (Sec. 3.2, Tables 1 and 2) on a text-conditioned
3-D model, shared by `python -m jaxcf.evaluate --method=prompt_swap`.

    summary = evaluate(trained, workdir, "test", out, classifier=clf, features=fx)

Synthetic subjects (the paper): eval.synthetic_subjects noises sampled under the first
category's prompt (minimal lesion load / CN) and, from the same noise, under every other
category's prompt. Real subjects (the paper's future work): every subject of the split
below the top category, inverted under its own prompt (counterfactual.prompt_swap.strength)
and decoded under each higher category's prompt.

Table 1 per model: FID on 3-D features (Med3D; with an untrained extractor the number is
a Frechet distance and is never called FID), diversity MS-SSIM over the generated
volumes, subject MS-SSIM and PSNR (factual vs counterfactual), and text alignment (the
share of generated volumes a 3-D classifier trained on real data assigns to the prompt's
category). Table 2: the guidance-scale sweep of the first -> top swap.

On MS data with lesion masks (phantoms) a lesion meter measures what the swap exists for:
the lesion voxels of each volume, counted as FLAIR-hyperintense voxels (brighter than a
ratio times the subject's median brain intensity, the ratio fitted on the training split
for the best Dice with the lesion masks). Per-volume min-max scaling makes a fixed
intensity threshold useless (a high lesion load darkens the rest of the brain), hence the
ratio to the subject's own median.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
import time
from collections.abc import Callable
from typing import Any

import ml_collections
import numpy as np

from jaxcf.counterfactual.prompt_swap import residual_edit
from jaxcf.counterfactual.runner import MethodRunner
from jaxcf.data.text import known_prompt_tokens
from jaxcf.errors import InputError
from jaxcf.evaluation.image_metrics import (
    diversity_ms_ssim,
    ms_ssim_settings,
    subject_preservation,
)
from jaxcf.evaluation.reports import write_summary
from jaxcf.experiments.prompt_swap import METHOD, orthogonal_tiles

# Voxels of a [0, 1]-scaled volume above this are inside the head (the background is 0).
BRAIN_LEVEL = 0.02


@dataclasses.dataclass(frozen=True)
class LesionMeter:
    """Lesion voxels = voxels brighter than `ratio` x the subject's median brain intensity
    (module docstring); `dice`: the Dice of that rule with the lesion masks of the split it
    was fitted on."""

    ratio: float
    dice: float
    value_range: tuple[float, float]

    def masks(self, volumes: np.ndarray) -> np.ndarray:
        """(N, X, Y, Z, C) volumes in value_range -> (N, X, Y, Z) bool lesion masks."""
        unit = _unit(volumes, self.value_range)
        brain = unit > BRAIN_LEVEL
        out = np.zeros(unit.shape, bool)
        for i, (v, b) in enumerate(zip(unit, brain, strict=True)):
            if b.any():
                out[i] = b & (v > self.ratio * np.median(v[b]))
        return out

    def voxels(self, volumes: np.ndarray) -> np.ndarray:
        """(N, X, Y, Z, C) -> (N,) lesion voxel counts."""
        return self.masks(volumes).sum(axis=(1, 2, 3))


def _unit(volumes: np.ndarray, value_range: tuple[float, float]) -> np.ndarray:
    lo, hi = value_range
    return (np.asarray(volumes, np.float32)[..., 0] - lo) / (hi - lo)


def fit_lesion_meter(
    volumes: np.ndarray,
    segs: np.ndarray,
    value_range: tuple[float, float],
    ratios: np.ndarray | None = None,
) -> LesionMeter:
    """The ratio (default 1.05 ... 3.00 in steps of 0.01) whose masks best match the lesion
    masks `segs` (N, X, Y, Z) of `volumes` (N, X, Y, Z, C), by Dice pooled over voxels."""
    ratios = np.round(np.arange(1.05, 3.0001, 0.01), 2) if ratios is None else ratios
    truth = np.asarray(segs) > 0
    if not truth.any():
        raise InputError("the lesion meter needs lesion masks with at least one lesion voxel")
    unit = _unit(volumes, value_range)
    brain = unit > BRAIN_LEVEL
    medians = np.array(
        [np.median(v[b]) if b.any() else np.inf for v, b in zip(unit, brain, strict=True)]
    )
    relative = np.where(brain, unit / medians[:, None, None, None], 0.0)
    best = (-1.0, float(ratios[0]))
    for ratio in ratios:
        found = relative > ratio
        dice = 2.0 * np.sum(found & truth) / (found.sum() + truth.sum())
        if dice > best[0]:
            best = (float(dice), float(ratio))
    return LesionMeter(ratio=best[1], dice=best[0], value_range=tuple(value_range))


def split_arrays(
    data_config: Any, split: str, fields: tuple[str, ...] = ("image", "label", "seg")
) -> dict[str, np.ndarray]:
    """Every item of a prepared split, the `fields` it has: {"image" (N, ..., C), "label"
    (N,), "seg" (N, ...) where the data has lesion masks, "masks" (N, H, W, 3) for CXR}."""
    from jaxcf.data.pipeline import make_dataset

    parts: dict[str, list[np.ndarray]] = {}
    for batch in make_dataset(data_config, split, seed=0, train=False, drop_remainder=False):
        keep = np.asarray(batch["valid"], bool)
        for field in fields:
            if field in batch:
                parts.setdefault(field, []).append(np.asarray(batch[field])[keep])
    if not parts:
        raise InputError(f"the {split} split of {data_config.prepared} holds no items")
    return {k: np.concatenate(v) for k, v in parts.items()}


def category_prompts(prepared: str | pathlib.Path) -> list[str]:
    """The prompt of each category label 0, 1, ... of a prepared text dataset."""
    from jaxcf.data.prepare import prepared_info

    by_label: dict[int, str] = {}
    for case in prepared_info(prepared)["cases"]:
        if case.get("prompt"):
            by_label.setdefault(int(case["label"]), str(case["prompt"]))
    if len(by_label) < 2 or sorted(by_label) != list(range(len(by_label))):
        raise InputError(
            f"{prepared}: prompt_swap evaluation needs prompts for categories 0..K-1 (K >= 2), "
            f"found labels {sorted(by_label)}"
        )
    return [by_label[k] for k in range(len(by_label))]


def short_names(prompts: list[str]) -> list[str]:
    """The words that tell the prompts apart: "Subject has high lesion load" -> "high"."""
    said = [re.findall(r"[\w'-]+", p) for p in prompts]
    shared = set.intersection(*({w.lower() for w in s} for s in said))
    return [
        " ".join(w for w in s if w.lower() not in shared) or p
        for s, p in zip(said, prompts, strict=True)
    ]


class Swapper:
    """prompt_swap of a trained model in one mode and guidance scale, compiled once; rows
    carry their own source and target prompts."""

    def __init__(self, trained: Any, mode: str, guidance_scale: float, progress: bool):
        config = trained.config
        group = ml_collections.ConfigDict(config.counterfactual.to_dict())
        settings = group[METHOD]
        settings.mode = mode
        settings.guidance_scale = float(guidance_scale)
        if mode == "synthetic":
            settings.strength = 1.0
        model = trained.method_model()
        self.tokenizer = model.tokenizer
        self.runner = MethodRunner(
            model, trained.weights, METHOD, group, config.mesh, progress=progress
        )

    def tokens(self, prompts: list[str], role: str) -> dict[str, np.ndarray]:
        t = known_prompt_tokens(self.tokenizer, prompts, f"{role} prompts")
        return {f"{role}_prompt_ids": t["prompt_ids"], f"{role}_prompt_mask": t["prompt_mask"]}

    def __call__(self, images: np.ndarray, sources: list[str], targets: list[str]) -> dict:
        batch = {
            "image": images,
            **self.tokens(sources, "source"),
            **self.tokens(targets, "target"),
        }
        return self.runner(batch)


def _mean(values: Any) -> float:
    return float(np.mean(np.asarray(values, np.float64)))


def _pairs(
    factual: np.ndarray, counterfactual: np.ndarray, value_range: tuple[float, float]
) -> dict[str, np.ndarray]:
    lo, hi = value_range
    size = int(factual.shape[1])
    kept = subject_preservation(factual, counterfactual, hi - lo, **ms_ssim_settings(size))
    return {k: np.asarray(v, np.float64) for k, v in kept.items()}


def save_prompts_panel(
    path: pathlib.Path,
    volumes: list[np.ndarray],
    labels: list[str],
    value_range: tuple[float, float],
    title: str,
) -> pathlib.Path:
    """One subject under several prompts: a row per (X, Y, Z) volume (axial, coronal,
    sagittal mid-slices), then |last - first|."""
    from jaxcf.visualization import heatmap_rgb, save_panel, to_uint8

    lo, hi = value_range
    heat = np.abs(volumes[-1] - volumes[0])
    vmax = float(max(heat.max(), 1e-6))
    rows = [[to_uint8(t, lo, hi) for t in orthogonal_tiles(v)] for v in volumes]
    rows.append([heatmap_rgb(t, vmax) for t in orthogonal_tiles(heat)])
    return save_panel(
        rows,
        path,
        titles=["axial", "coronal", "sagittal"],
        row_labels=[*labels, f"|{labels[-1]} - {labels[0]}| (max {vmax:.2f})"],
        title=title,
    )


Classifier = Callable[[np.ndarray], np.ndarray]  # (N, X, Y, Z, C) -> (N, K) probabilities


@dataclasses.dataclass
class Scorers:
    """Optional networks of the evaluation: a category classifier (text alignment) and a
    3-D feature extractor for FID (jaxcf.evaluation.fid), each with a description."""

    classifier: Classifier | None = None
    classifier_name: str = ""
    features: Any = None


def _alignment(scorers: Scorers, volumes: np.ndarray, labels: np.ndarray) -> float | None:
    if scorers.classifier is None:
        return None
    predicted = np.argmax(np.asarray(scorers.classifier(volumes)), axis=-1)
    return float(np.mean(predicted == np.asarray(labels)))


def evaluate(
    trained: Any,
    workdir: pathlib.Path,
    split: str,
    out: pathlib.Path,
    *,
    scorers: Scorers | None = None,
    progress: bool = True,
) -> dict:
    """Tables 1 and 2 of paper 004 for one model (module docstring) -> the summary written
    to out/metrics.json (and metrics.md, synthetic_panel.png, real_panel.png)."""
    from jaxcf.experiments.segmentation import eval_data

    scorers = scorers or Scorers()
    config = trained.config
    if config.data.task != "volumes" or config.diffusion.condition != "prompt":
        raise InputError(
            "evaluate --method=prompt_swap needs a prompt-conditioned 3-D volume model "
            f"(data.task='volumes', diffusion.condition='prompt'); this model has "
            f"data.task={config.data.task!r}, diffusion.condition={config.diffusion.condition!r}"
        )
    started = time.perf_counter()
    data_config = eval_data(config, workdir)
    prompts = category_prompts(data_config.prepared)
    names = short_names(prompts)
    value_range = tuple(float(v) for v in config.data.get("value_range", (-1.0, 1.0)))
    lo, hi = value_range
    settings = config.counterfactual[METHOD]
    real = split_arrays(data_config, split)
    meter = None
    if "seg" in real:
        train = split_arrays(data_config, "train")
        meter = fit_lesion_meter(train["image"], train["seg"], value_range)

    def lesions(volumes: np.ndarray) -> float | None:
        return None if meter is None else _mean(meter.voxels(volumes))

    # -- synthetic subjects: one noise per subject, every category's prompt ----------------
    count = int(config.eval.synthetic_subjects)
    if count < 2:
        raise InputError(f"eval.synthetic_subjects must be >= 2, got {count}")
    size, channels = int(config.data.volume_size), int(config.data.channels)
    blank = np.zeros((count, size, size, size, channels), np.float32)
    top = len(prompts) - 1

    def synthetic(w: float, targets: range) -> tuple[np.ndarray, dict[int, np.ndarray]]:
        swapper = Swapper(trained, "synthetic", w, progress)
        factual, made = None, {}
        for k in targets:
            result = swapper(blank, [prompts[0]] * count, [prompts[k]] * count)
            factual = result["factual"] if factual is None else factual
            made[k] = result["counterfactual"]
        return factual, made

    w_main = float(settings.guidance_scale)
    factual, made = synthetic(w_main, range(1, len(prompts)))
    generated = np.concatenate([factual, *made.values()])
    generated_labels = np.concatenate([np.zeros(count, int), *[np.full(count, k) for k in made]])
    per_target = []
    for k, volumes in made.items():
        kept = _pairs(factual, volumes, value_range)
        per_target.append(
            {
                "target": names[k],
                "prompt": prompts[k],
                "psnr": _mean(kept["psnr"]),
                "ms_ssim": _mean(kept["ms_ssim"]),
                "lesion_voxels": lesions(volumes),
                "more_lesion_share": None
                if meter is None
                else _mean(meter.voxels(volumes) > meter.voxels(factual)),
                "alignment": _alignment(scorers, volumes, np.full(count, k)),
            }
        )
    ms_kw = ms_ssim_settings(size)
    table1 = {
        "model": f"{config.model.family} ({config.model.get('preset', '')}), step {trained.step}",
        "fid": _fid(scorers, real["image"], generated, value_range),
        "diversity_ms_ssim": float(diversity_ms_ssim(generated, hi - lo, **ms_kw)),
        "subject_ms_ssim": _mean([r["ms_ssim"] for r in per_target]),
        "psnr": _mean([r["psnr"] for r in per_target]),
        "alignment": _alignment(scorers, generated, generated_labels),
        "guidance_scale": w_main,
        "subjects": count,
    }
    synthetic_lesions = {
        "factual": {"prompt": names[0], "lesion_voxels": lesions(factual)},
        "counterfactuals": per_target,
    }

    # -- Table 2: guidance sweep of the first -> top swap ---------------------------------
    sweep = []
    for w in tuple(float(v) for v in config.eval.guidance_scales):
        if w == w_main:
            f_w, cf_w = factual, made[top]
        else:
            f_w, more = synthetic(w, range(top, top + 1))
            cf_w = more[top]
        kept = _pairs(f_w, cf_w, value_range)
        sweep.append(
            {
                "guidance_scale": w,
                "alignment": _alignment(scorers, cf_w, np.full(count, top)),
                "subject_ms_ssim": _mean(kept["ms_ssim"]),
                "psnr": _mean(kept["psnr"]),
                "lesion_voxels": lesions(cf_w),
                "factual_lesion_voxels": lesions(f_w),
            }
        )

    # -- real subjects of the split, inverted under their own prompt ---------------------
    real_rows, real_example = [], None
    labels = np.asarray(real["label"]).astype(int)
    rows = [(i, k) for i in range(len(labels)) for k in range(labels[i] + 1, len(prompts))]
    if rows:
        swapper = Swapper(trained, "real", w_main, progress)
        index = np.array([i for i, _ in rows])
        result = swapper(
            real["image"][index],
            [prompts[labels[i]] for i, _ in rows],
            [prompts[k] for _, k in rows],
        )
        for source in range(len(prompts)):
            for k in range(source + 1, len(prompts)):
                pick = [j for j, (i, t) in enumerate(rows) if labels[i] == source and t == k]
                if not pick:
                    continue
                inputs, rebuilt = result["factual"][pick], result["reconstruction"][pick]
                decoded = result.get("decoded", result["counterfactual"])[pick]
                recon = _pairs(inputs, rebuilt, value_range)
                truth = None
                if "seg" in real:
                    truth = _mean((real["seg"][index[pick]] > 0).sum(axis=(1, 2, 3)))
                # Both edits of the same sampler outputs (prompt_swap's module docstring).
                for edit, cfs in (
                    ("residual", residual_edit(inputs, rebuilt, decoded)),
                    ("decoded", decoded),
                ):
                    kept = _pairs(inputs, cfs, value_range)
                    real_rows.append(
                        {
                            "source": names[source],
                            "target": names[k],
                            "edit": edit,
                            "subjects": len(pick),
                            "true_lesion_voxels": truth,
                            "input_lesion_voxels": lesions(inputs),
                            "lesion_voxels": lesions(cfs),
                            "more_lesion_share": None
                            if meter is None
                            else _mean(meter.voxels(cfs) > meter.voxels(inputs)),
                            "psnr": _mean(kept["psnr"]),
                            "ms_ssim": _mean(kept["ms_ssim"]),
                            "reconstruction_psnr": _mean(recon["psnr"]),
                            "alignment": _alignment(scorers, cfs, np.full(len(pick), k)),
                        }
                    )
        real_example = _real_example(rows, labels, result, names)

    reference = []
    # A latent model draws only what its autoencoder can: the real volumes' round trip.
    round_trip = trained.autoencode(real["image"]) if trained.space == "latent" else None
    for k, name in enumerate(names):
        chosen = labels == k
        if chosen.any():
            reference.append(
                {
                    "category": name,
                    "subjects": int(chosen.sum()),
                    "lesion_voxels": lesions(real["image"][chosen]),
                    "autoencoded_lesion_voxels": None
                    if round_trip is None
                    else lesions(round_trip[chosen]),
                    "true_lesion_voxels": _mean((real["seg"][chosen] > 0).sum(axis=(1, 2, 3)))
                    if "seg" in real
                    else None,
                    "alignment": _alignment(
                        scorers, real["image"][chosen], np.full(chosen.sum(), k)
                    ),
                }
            )

    out.mkdir(parents=True, exist_ok=True)
    panels = [
        save_prompts_panel(
            out / "synthetic_panel.png",
            [factual[0][..., 0], *(made[k][0][..., 0] for k in made)],
            names,
            value_range,
            f"synthetic subject 0 under each prompt (w = {w_main:g})",
        )
    ]
    if real_example is not None:
        volumes, shown = real_example
        panels.append(
            save_prompts_panel(
                out / "real_panel.png",
                volumes,
                shown,
                value_range,
                f"real {split} subject, inverted to strength {float(settings.strength):g}",
            )
        )
    summary = {
        "method": METHOD,
        "split": split,
        "step": int(trained.step),
        "prompts": prompts,
        "table1": table1,
        "synthetic": synthetic_lesions,
        "table2": sweep,
        "real": real_rows,
        "real_reference": reference,
        "lesion_meter": None if meter is None else dataclasses.asdict(meter),
        "classifier": scorers.classifier_name or None,
        "settings": {
            "num_steps": int(settings.num_steps),
            "strength": float(settings.strength),
            "spacing": str(settings.spacing),
            "guidance_interval": [float(settings.guidance_from), float(settings.guidance_to)],
        },
        "panels": [str(p) for p in panels],
        "seconds": time.perf_counter() - started,
    }
    return write_summary(summary, markdown(summary), out)


def _real_example(
    rows: list[tuple[int, int]], labels: np.ndarray, result: dict, names: list[str]
) -> tuple[list[np.ndarray], list[str]] | None:
    """The first subject of category 0 swapped to every other category: its volumes
    (input, then one per target) for the panel, or None."""
    first = [j for j, (i, _) in enumerate(rows) if labels[i] == 0]
    if len(first) < len(names) - 1:
        return None
    subject = rows[first[0]][0]
    mine = [j for j, (i, _) in enumerate(rows) if i == subject]
    volumes = [result["factual"][mine[0]][..., 0]]
    volumes += [result["counterfactual"][j][..., 0] for j in mine]
    return volumes, [f"input ({names[0]})"] + [f"-> {names[rows[j][1]]}" for j in mine]


def _fid(
    scorers: Scorers, real: np.ndarray, generated: np.ndarray, value_range: tuple[float, float]
) -> dict | None:
    if scorers.features is None:
        return None
    from jaxcf.evaluation import fid

    found = fid.fid_3d(real, generated, scorers.features, value_range=value_range, progress=False)
    return found.as_dict()


def _fmt(value: Any, spec: str = ".4f") -> str:
    return "n/a" if value is None else format(value, spec)


def markdown(summary: dict) -> str:
    """metrics.md: Table 1 and Table 2 in paper 004's layout, then the lesion tables."""
    t1 = summary["table1"]
    fid = t1["fid"]
    fid_head = fid["label"] if fid else "FID (no feature extractor given)"
    pct = lambda v: _fmt(None if v is None else 100 * v, ".1f")
    lines = [
        f"## Table 1: prompt swap, {summary['split']} split, step {summary['step']}",
        f"{t1['subjects']} synthetic subjects x {len(summary['prompts'])} prompts, "
        f"w = {t1['guidance_scale']:g}, {summary['settings']['num_steps']} steps; "
        f"alignment classifier: {summary['classifier'] or 'none given'}",
        "",
        f"| Model | {fid_head} ↓ | MS-SSIM (diversity) ↓ | subject MS-SSIM ↑ | PSNR (dB) ↑ "
        "| text alignment (%) ↑ |",
        "|---|---|---|---|---|---|",
        f"| {t1['model']} | {_fmt(fid['value'] if fid else None)} "
        f"| {t1['diversity_ms_ssim']:.4f} | {t1['subject_ms_ssim']:.4f} | {t1['psnr']:.2f} "
        f"| {pct(t1['alignment'])} |",
        "",
        f"## Table 2: guidance scale, {summary['prompts'][0]!r} -> {summary['prompts'][-1]!r}",
        "",
        "| w | text alignment (%) ↑ | subject MS-SSIM ↑ | PSNR (dB) ↑ | lesion voxels |",
        "|---|---|---|---|---|",
    ]
    for row in summary["table2"]:
        lines.append(
            f"| {row['guidance_scale']:g} | {pct(row['alignment'])} "
            f"| {row['subject_ms_ssim']:.4f} | {row['psnr']:.2f} "
            f"| {_fmt(row['factual_lesion_voxels'], '.1f')} -> "
            f"{_fmt(row['lesion_voxels'], '.1f')} |"
        )
    meter = summary["lesion_meter"]
    syn = summary["synthetic"]
    lines += [
        "",
        "## Synthetic subjects: factual vs counterfactual per target prompt",
        "",
        "| target | lesion voxels (factual -> counterfactual) | more lesion (%) | subject MS-SSIM "
        "| PSNR (dB) | alignment (%) |",
        "|---|---|---|---|---|---|",
    ]
    for row in syn["counterfactuals"]:
        lines.append(
            f"| {syn['factual']['prompt']} -> {row['target']} "
            f"| {_fmt(syn['factual']['lesion_voxels'], '.1f')} -> "
            f"{_fmt(row['lesion_voxels'], '.1f')} | {pct(row['more_lesion_share'])} "
            f"| {row['ms_ssim']:.4f} | {row['psnr']:.2f} | {pct(row['alignment'])} |"
        )
    if summary["real"]:
        lines += [
            "",
            f"## Real {summary['split']} subjects, inverted under their own prompt "
            f"(strength {summary['settings']['strength']:g})",
            "",
            "| swap | edit | subjects | lesion voxels: true / measured in input -> "
            "counterfactual | more lesion (%) | subject MS-SSIM | PSNR (dB) "
            "| reconstruction PSNR (dB) | alignment (%) |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for row in summary["real"]:
            lines.append(
                f"| {row['source']} -> {row['target']} | {row['edit']} | {row['subjects']} "
                f"| {_fmt(row['true_lesion_voxels'], '.1f')} / "
                f"{_fmt(row['input_lesion_voxels'], '.1f')} -> {_fmt(row['lesion_voxels'], '.1f')} "
                f"| {pct(row['more_lesion_share'])} "
                f"| {row['ms_ssim']:.4f} | {row['psnr']:.2f} | {row['reconstruction_psnr']:.2f} "
                f"| {pct(row['alignment'])} |"
            )
        lines += [
            "",
            "edit: residual = input + decoded(target) - decoded(source) from the same inverted "
            "noise (the default; the reconstruction error cancels); decoded = the "
            "target-prompt decode itself.",
        ]
    reference = summary["real_reference"]
    vae = any(row.get("autoencoded_lesion_voxels") is not None for row in reference)
    lines += [
        "",
        f"## Real {summary['split']} volumes by category (what the meters read on real data)",
        "",
        "| category | subjects | lesion voxels: true / measured "
        + ("| through the VAE " if vae else "")
        + "| alignment (%) |",
        "|---|---|---|" + ("---|" if vae else "") + "---|",
    ]
    for row in reference:
        through = f"| {_fmt(row.get('autoencoded_lesion_voxels'), '.1f')} " if vae else ""
        lines.append(
            f"| {row['category']} | {row['subjects']} | {_fmt(row['true_lesion_voxels'], '.1f')} "
            f"/ {_fmt(row['lesion_voxels'], '.1f')} {through}| {pct(row['alignment'])} |"
        )
    if meter:
        lines += [
            "",
            f"Lesion voxels: voxels brighter than {meter['ratio']:.2f} x the subject's median "
            f"brain intensity (ratio fitted on the training split; Dice {meter['dice']:.3f} "
            "with its lesion masks).",
        ]
    return "\n".join(lines)


def load_scorers(classifier: str | None, features: str | None) -> Scorers:
    """The evaluation's optional networks from the CLI: --classifier (a classifier run's
    workdir) and --features (MedicalNet / Med3D weights; unset: an untrained Med3D-10,
    whose distance is reported as FD, never FID; "none": no FID column)."""
    from jaxcf.evaluation import alignment, fid

    scorers = Scorers()
    if classifier:
        model = alignment.load_classifier(classifier)
        scorers.classifier = model.predict
        scorers.classifier_name = f"{classifier} (step {model.step})"
    if features is None:
        scorers.features = fid.med3d_extractor(config=10)
    elif features.lower() != "none":
        scorers.features = fid.med3d_extractor(features)
    return scorers
