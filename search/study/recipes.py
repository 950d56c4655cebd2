"""Hand recipes: one setting for every layer (int8; 50 % pruning + int8; ...), what a user
could apply without a search. A study runs them first, as trials of their own with its own
recovery, so that every front is measured against them (and TPE starts from known-good
points); ``ggopt pareto`` says which front models beat which recipe."""

from __future__ import annotations

import math
from typing import Any

from search.config import DEFAULT_RECIPES, Recipe, StudyConfigError
from search.record import RECIPE
from search.study.setup import StudySetup
from spaces import ORDER

__all__ = ["RECIPE", "RecipeError", "recipe_params", "recipe_trials"]


class RecipeError(ValueError):
    """A recipe this study's knobs or model cannot express."""


def recipe_params(setup: StudySetup, recipe: Recipe, baseline_variant: str | None = None
                  ) -> dict[str, Any]:
    """The trial parameters of ``recipe`` in this study's space: every enabled knob set, the
    layers each knob sees after the knobs before it (the order trials build in). An
    upsample of "baseline" takes the form the baseline was measured on (``baseline_variant``:
    "subpixel" where the knob can express it, else the published form). Raises RecipeError
    naming what the study's space lacks."""
    needs = {"prune": recipe.prune > 0, "depthwise": recipe.depthwise,
             "upsample": recipe.upsample not in (None, "keep", "baseline"),
             "precision": recipe.precision != "fp32"}
    missing = [name for name, needed in needs.items() if needed and name not in setup.knobs]
    if missing:
        raise RecipeError(f"needs the {', '.join(missing)} knob, which [knobs] enabled leaves "
                          f"out")
    model, out = setup.base, {}
    for name in ORDER:
        knob = setup.knobs.get(name)
        if knob is None:
            continue
        if name == "upsample":
            last, mode = knob.last_layer(model), recipe.upsample or "subpixel"
            if mode == "baseline":
                mode = "subpixel" if baseline_variant == "subpixel" else "keep"
            wanted = {layer: (mode if mode != "lowres" or layer == last else "subpixel")
                      for layer in knob.layers(model)}
            for layer, chosen in wanted.items():
                if chosen not in knob.modes_for(model, layer):
                    raise RecipeError(f"upsample mode {chosen!r} is not offered for layer "
                                      f"{layer!r} (modes: {knob.modes_for(model, layer)})")
            out.update({f"upsample.{layer}": mode for layer, mode in wanted.items()})
        elif name == "depthwise":
            out.update({f"depthwise.{layer}": recipe.depthwise for layer in knob.layers(model)})
        elif name == "lowrank":
            out.update({f"lowrank.{layer}": False for layer in knob.layers(model)})
        elif name in ("dilate", "group"):
            out.update({f"{name}.{layer}": 1 for layer in knob.layers(model)})
        elif name == "prune":
            out.update({f"prune.{layer}.ratio": min(
                recipe.prune, math.floor(knob.max_ratio_for(layer) * 20) / 20)
                for layer in knob.layers(model)})
            out.update({"prune.criterion": "l2", "prune.round_to": 1})
        elif name == "precision":
            if recipe.precision not in knob.precisions:
                raise RecipeError(f"precision {recipe.precision!r} is not among the study's "
                                  f"{knob.precisions}")
            out["precision"] = recipe.precision
        if name != "precision":
            try:
                model = knob.apply(model, knob.from_params(out, model))
            except ValueError as error:  # a knob that refuses this setting for this model
                raise RecipeError(f"the {name} knob refuses it: {error}") from None
    return out


def recipe_trials(setup: StudySetup, baseline_variant: str | None = None
                  ) -> list[tuple[str, dict[str, Any]]]:
    """Each recipe's label and parameters, in order, once each (two recipes this space
    makes the same trial run once, under the first one's label). The study file's own
    recipes must all be expressible (a clear error before any work); the default ones the
    study cannot express are left out. ``baseline_variant``: the form the study's baseline
    was measured on, once it is (:func:`recipe_params`)."""
    given = setup.config.recipes
    trials: list[tuple[str, dict[str, Any]]] = []
    for recipe in DEFAULT_RECIPES if given is None else given:
        try:
            params = recipe_params(setup, recipe, baseline_variant)
        except RecipeError as error:
            if given is None:
                continue
            raise StudyConfigError(f"{setup.config.path}: [search] recipes: {recipe.label!r} "
                                   f"{error}") from None
        if all(params != p for _, p in trials):
            trials.append((recipe.label, params))
    return trials
