"""Run per-case jobs sequentially or in worker processes, with a tqdm progress bar.

Cases are independent (each has its own seed streams), so the output does not depend on the
number of workers. Workers are spawned, not forked: the parent may already run JAX's
threads, which fork would copy in an undefined state.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def run_cases(
    job: Callable[[int], T], cases: int, *, workers: int = 1, progress: bool = False, desc: str = ""
) -> list[T]:
    """[job(0), ..., job(cases - 1)] in order; `job` must be picklable when workers > 1."""
    bar = {"total": cases, "desc": desc, "unit": "case", "disable": not progress}
    if workers <= 1 or cases <= 1:
        return [job(index) for index in tqdm(range(cases), **bar)]
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(min(workers, cases), mp_context=context) as pool:
        return list(tqdm(pool.map(job, range(cases)), **bar))
