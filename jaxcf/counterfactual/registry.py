"""Counterfactual methods by name: the one place that lists them.

A method is a module exporting

    LABEL: str                                   its name in tables ("Diff-SCM")
    default_config() -> ConfigDict               its settings, counterfactual.<name>.*
    build(model, cfg) -> fn(weights, batch, key) -> dict
        model: a jaxcf.counterfactual.model.MethodModel; cfg: its sub-config;
        batch: {"image": (B, ..., C), ...method inputs}; the dict holds at least
        "counterfactual" (B, ..., C) and, where the method makes them, "heatmap" (B, ...)
        / "mask". fn is pure (the runner jits it with the weights as an argument).

and optionally `prepare(batch, cfg) -> batch` (host-side numpy inputs the method needs,
e.g. the promptable method's mask prompt from a box or a file) and `describe(cfg) -> str`
(its name in tables under those settings, e.g. "Promptable (oracle box)"). Adding a
method is one module and one line in METHODS.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import ml_collections

from jaxcf.errors import InputError

METHODS: dict[str, str] = {
    "diffscm": "jaxcf.counterfactual.diffscm",
    "promptable": "jaxcf.counterfactual.promptable",
    "prompt_swap": "jaxcf.counterfactual.prompt_swap",
    "attention": "jaxcf.counterfactual.attention",
    "refine": "jaxcf.counterfactual.refine",
    "medsegdiff": "jaxcf.counterfactual.medsegdiff",
}

REQUIRED = ("LABEL", "default_config", "build")


def names() -> tuple[str, ...]:
    return tuple(METHODS)


def get(name: str) -> ModuleType:
    """The method module registered under `name` (ValueError listing the known names)."""
    if name not in METHODS:
        raise InputError(f"unknown counterfactual method {name!r}; known: {', '.join(METHODS)}")
    module = importlib.import_module(METHODS[name])
    missing = [attr for attr in REQUIRED if not hasattr(module, attr)]
    if missing:  # a programming error in the plug-in, not bad input
        raise TypeError(f"method module {module.__name__} lacks {missing}")
    return module


def label(name: str, cfg: ml_collections.ConfigDict | None = None) -> str:
    """The method's name in tables: describe(cfg) where the module has it and cfg is
    given (the settings that change what a row means, e.g. an oracle prompt), else LABEL."""
    module = get(name)
    if cfg is not None and hasattr(module, "describe"):
        return module.describe(cfg)
    return module.LABEL


def default_configs() -> ml_collections.ConfigDict:
    """{name: that method's default_config()} for every registered method."""
    return ml_collections.ConfigDict({name: get(name).default_config() for name in METHODS})


def prepare(name: str, batch: dict, cfg: ml_collections.ConfigDict) -> dict:
    """The method's host-side preparation of a batch (identity when it has none)."""
    module = get(name)
    return module.prepare(batch, cfg) if hasattr(module, "prepare") else batch
