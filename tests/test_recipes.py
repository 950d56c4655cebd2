"""Hand recipes: what a study runs first, how a study file names them, and the verdict
against the front that `ggopt pareto` prints."""

from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState, create_trial
from test_search import write_study

from grasp.models import get_model
from search.config import Recipe, StudyConfigError, default_config, load_study_config
from search.front import recipe_rows
from search.review.table import recipe_verdict
from search.study.recipes import RECIPE, recipe_trials
from search.study.run import run_study
from search.study.setup import StudySetup, load_study
from spaces import get_knob


def _setup(recipes=None, modes=None, knobs=("prune", "upsample", "precision")) -> StudySetup:
    options = {"upsample": {"modes": modes} if modes else {},
               "precision": {"precisions": ["fp32", "int8"]}}
    config = default_config(Path("study.toml"), "r", recipes=recipes)
    return StudySetup(config, get_model("ggcnn"), None, None, [],
                      {k: get_knob(k, **options.get(k, {})) for k in knobs})


def test_a_low_resolution_decoder_recipe_only_where_the_modes_allow_it():
    low = [p for _, p in recipe_trials(_setup(modes=["subpixel", "lowres"]))
           if "lowres" in p.values()]
    assert len(low) == 1
    assert {k: v for k, v in low[0].items() if k.startswith("upsample.")} == {
        "upsample.convt1": "subpixel", "upsample.convt2": "subpixel", "upsample.convt3": "lowres"}
    assert all(v == 0.0 for k, v in low[0].items() if k.endswith(".ratio"))
    assert not any("lowres" in p.values() for _, p in recipe_trials(_setup(modes=["subpixel"])))


def test_the_default_recipes_in_order_each_setting_every_layer():
    setup = _setup(knobs=("prune", "upsample", "depthwise", "precision"))
    trials = dict(recipe_trials(setup))
    assert list(trials) == ["uncompressed", "int8", "50 % pruning + int8",
                            "low-resolution last decoder + int8", "depthwise everywhere + int8",
                            "25 % pruning + depthwise everywhere + int8"]
    assert trials["uncompressed"]["precision"] == "fp32"
    assert set(trials["uncompressed"].values()) - {"fp32", "l2", 1} == {"keep", 0.0}
    # Once the baseline is measured, the uncompressed recipe ships its form: with sub-pixel
    # decoders when those ran faster (an exact rewrite), never a slower copy of it.
    measured = dict(recipe_trials(setup, "subpixel"))
    ups = {v for k, v in measured["uncompressed"].items() if k.startswith("upsample.")}
    assert ups == {"subpixel"} and measured["uncompressed"]["precision"] == "fp32"
    assert dict(recipe_trials(setup, "plain"))["uncompressed"] == trials["uncompressed"]
    assert list(measured) == list(trials)
    layers = [k for k in trials["depthwise everywhere + int8"] if k.startswith("depthwise.")]
    assert layers and all(trials["depthwise everywhere + int8"][k] is True for k in layers)
    pruned = trials["25 % pruning + depthwise everywhere + int8"]
    ratios = [v for k, v in pruned.items() if k.endswith(".ratio")]
    assert ratios and all(0 < r <= 0.25 for r in ratios) and max(ratios) == 0.25
    # Without the depthwise knob the depthwise recipes are left out, not refused.
    assert "depthwise everywhere + int8" not in dict(recipe_trials(_setup()))


def test_a_study_files_recipes_are_its_own_and_checked_before_any_work(
        tmp_path, checkpoint, jacquard_root):
    path = write_study(tmp_path, checkpoint, jacquard_root)
    text = path.read_text()
    path.write_text(text.replace("[search]\n", '[search]\nrecipes = [{prune = 0.5}, '
                                               '{name = "mine", prune = 0.25, precision = '
                                               '"fp32"}, {name = "again", prune = 0.5}]\n'))
    config = load_study_config(path)
    assert config.recipes == (Recipe(prune=0.5), Recipe(name="mine", prune=0.25,
                                                        precision="fp32"),
                              Recipe(name="again", prune=0.5))
    # The same trial twice runs once, under the first label.
    setup = StudySetup(config, get_model("ggcnn"), None, None, [],
                       {k: get_knob(k) for k in ("prune", "upsample", "precision")})
    assert [label for label, _ in recipe_trials(setup)] == ["50 % pruning + int8", "mine"]
    path.write_text(text.replace("[search]\n", "[search]\nrecipes = [{prune = 1.5}]\n"))
    with pytest.raises(StudyConfigError, match=r"\[search\] recipes.*must be a list of tables"
                                               r".*prune = a multiple of 0.05 from 0 to 0.9"):
        load_study_config(path)
    # A recipe this study's knobs cannot express is named before the baseline is measured.
    path.write_text(text.replace("[search]\n", "[search]\nrecipes = [{depthwise = true}]\n"))
    with pytest.raises(StudyConfigError, match=r"recipes: 'depthwise everywhere \+ int8' needs "
                                               r"the depthwise knob"):
        run_study(load_study_config(path), track=False)
    assert "baseline" not in load_study(load_study_config(path)).user_attrs


def _trial(values, recipe=None, state=TrialState.COMPLETE, **attrs):
    user_attrs = {"values": dict(zip(("accuracy", "size", "latency"), values, strict=True)),
                  "constraints": [0.0], **attrs, **({RECIPE: recipe} if recipe else {})}
    return create_trial(state=state, values=None if state != TrialState.COMPLETE else
                        list(values), user_attrs=user_attrs,
                        distributions={}, params={})


def test_each_recipe_is_on_the_front_beaten_by_named_trials_or_stopped():
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    study.set_user_attr("baseline", {"accuracy": 0.55, "size": 100.0, "latency": 10.0})
    study.add_trial(_trial((0.55, 10.0, 1.0)))  # 0: a searched trial
    study.add_trial(_trial((0.5, 10.0, 0.9)))  # 1: another, faster still
    study.add_trial(_trial((0.4, 20.0, 2.0), "int8"))  # beaten by 0 and 1
    study.add_trial(_trial((0.6, 30.0, 3.0), "50 % pruning + int8"))  # on the front
    study.add_trial(_trial((0.7, 10.0, 1.0), "infeasible", constraints=[0.1]))
    study.add_trial(_trial((0.3, 40.0, 4.0), "raced", state=TrialState.PRUNED,
                           stop_reason="raced out: trial 0 is more accurate"))
    # The baseline as a trial: the same figures, a speed-up whose interval reaches 1x.
    study.add_trial(_trial((0.55, 100.0, 9.9), "uncompressed",
                           extra={"speedup": 1.01, "speedup_low": 0.98}))
    rows = {r["recipe"]: r for r in recipe_rows(study, ("accuracy", "size", "latency"))}
    assert [r["trial"] for r in rows.values()] == [2, 3, 4, 5, 6]
    assert recipe_verdict(rows["uncompressed"]) == "no better than the baseline"
    assert rows["int8"]["beaten_by"] == [1, 0]  # front order: fastest first
    assert recipe_verdict(rows["int8"]) == "beaten by trials 1, 0"
    assert recipe_verdict(rows["50 % pruning + int8"]) == "on the front"
    assert recipe_verdict(rows["infeasible"]) == "not beaten (infeasible)"
    assert recipe_verdict(rows["raced"]) == "stopped: raced out: trial 0 is more accurate"
    assert rows["int8"]["size_reduction"] == pytest.approx(5.0)
    assert rows["int8"]["accuracy_change_pp"] == pytest.approx(-15.0)
