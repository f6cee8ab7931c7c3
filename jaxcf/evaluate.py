"""python -m jaxcf.evaluate --config=configs/X.py --checkpoint=WORKDIR [--split=test]
    [--out=DIR] [--config.eval.*=...] [--config.counterfactual.*=...]

Runs the counterfactual methods of eval.methods (and the FLAIR thresholding baseline) over
a split of the model's data and writes metrics.json and metrics.md (a table shaped like
the papers' Table 1) plus example panels to --out (default WORKDIR/eval/<split>).
The data is the training run's: its data.root, or the phantom set it generated.
Exit codes: 0 done, 2 bad input (one line on stderr).
"""

from __future__ import annotations

import json
import pathlib
import sys

from absl import flags

from jaxcf.cli import call, start

PROG = "jaxcf.evaluate"


def _define(values: flags.FlagValues) -> None:
    flags.DEFINE_string("checkpoint", None, "Training workdir of the model.", flag_values=values)
    flags.DEFINE_string(
        "split", None, "train | val | test (default eval.split).", flag_values=values
    )
    flags.DEFINE_string("out", None, "Output directory.", flag_values=values)


def run_evaluation(trained, workdir: pathlib.Path, split: str, out: pathlib.Path) -> dict:
    """Evaluate a TrainedModel on a split; write metrics.json / metrics.md / panels."""
    from jaxcf.counterfactual.segment import METHODS, Segmenter
    from jaxcf.evaluation import benchmark
    from jaxcf.training.data import ensure_data
    from jaxcf.visualization import save_case_panel

    config = trained.config
    methods = [m.strip() for m in str(config.eval.methods).split(",") if m.strip()]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise ValueError(f"eval.methods: unknown {unknown}; known: {list(METHODS)}")
    if config.data.task != "slices2d":
        raise ValueError(f"evaluation runs on 2-D BraTS slices; data.task is {config.data.task!r}")
    data_config = ensure_data(config.data, workdir)
    bins = int(config.eval.num_bins)
    threshold = benchmark.choose_baseline_threshold(data_config, "val", config.eval.slices, bins)
    results, examples = benchmark.evaluate_split(
        Segmenter(trained, config.counterfactual),
        data_config,
        split,
        methods,
        slices=config.eval.slices,
        max_items=int(config.eval.max_items),
        bins=bins,
        baseline_threshold=threshold,
    )
    out.mkdir(parents=True, exist_ok=True)
    title = (
        f"Counterfactual segmentation, {split} split, {int(results['threshold']['slices'])} "
        f"{'tumour ' if config.eval.slices == 'tumour' else ''}slices (model step {trained.step})"
    )
    table = benchmark.results_table(results, title)
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


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    started = start(PROG, argv, _define, required=("checkpoint",))
    if isinstance(started, int):
        return started
    config, values = started

    from jaxcf.inference import load_trained, workdir_of

    split = values.split or config.eval.split
    workdir = workdir_of(values.checkpoint)
    out = pathlib.Path(values.out or workdir / "eval" / split)

    def run() -> dict:
        if split not in ("train", "val", "test"):
            raise ValueError(f"--split must be train, val or test, got {split!r}")
        return run_evaluation(load_trained(workdir, config), workdir, split, out)

    code, summary = call(PROG, run)
    if code:
        return code
    print(summary["table"])
    print(f"wrote {out}/metrics.json, metrics.md and example panels")
    return 0


if __name__ == "__main__":
    sys.exit(main())
