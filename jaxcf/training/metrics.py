"""Training metrics to workdir/metrics.jsonl and TensorBoard event files (workdir/tb)."""

from __future__ import annotations

import json
import math
import pathlib
import time
from typing import Any


class MetricWriter:
    """Append one JSON line per logged step and mirror scalars to TensorBoard."""

    def __init__(self, workdir: pathlib.Path, *, enabled: bool = True):
        self.enabled = enabled
        if not enabled:
            return
        self.path = workdir / "metrics.jsonl"
        from tensorboardX import SummaryWriter

        self.tb = SummaryWriter(str(workdir / "tb"))

    def write(self, step: int, scalars: dict[str, Any]) -> None:
        if not self.enabled:
            return
        row = {"step": step, "time": time.time(), **{k: float(v) for k, v in scalars.items()}}
        with self.path.open("a") as f:
            f.write(
                json.dumps(
                    {
                        k: (v if math.isfinite(v) else str(v)) if isinstance(v, float) else v
                        for k, v in row.items()
                    }
                )
                + "\n"
            )
        for name, value in scalars.items():
            self.tb.add_scalar(name, float(value), step)
        self.tb.flush()

    def close(self) -> None:
        if self.enabled:
            self.tb.close()
