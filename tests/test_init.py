"""`ggopt init`: a study file sized to the user's hours from a probe of the study itself.

The plan's arithmetic is checked against a plain sum of trial costs over random probe
figures; the probe's reading of trial records against figures made by hand; the command as
a user runs it, on a built-in model and on a network of one's own."""

from __future__ import annotations

import math
import re
import sys
from datetime import datetime, timedelta

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from optuna.distributions import CategoricalDistribution
from optuna.trial import FrozenTrial, TrialState

from search import new_study, plan
from search.cli import main
from search.config import load_study_config
from search.plan import (
    GATE_IMAGES,
    MAX_STEPS,
    MIN_STEPS,
    MIN_TRIALS,
    PROBE_STEPS,
    Phase,
    Probe,
    plan_study,
)
from search.stats import pack_hits

shares = st.floats(0.0, 1.0)
seconds = st.floats(1e-4, 5.0)


def _probe(draw: st.DrawFn) -> Probe:
    val = draw(st.integers(10, 5000))
    phase = st.builds(Phase, st.integers(1, 6), st.floats(0.5, 300.0), shares, shares,
                      seconds, st.floats(1e-4, 0.1), st.floats(1e-4, 0.1))
    names = draw(st.sampled_from([("warm", "startup", "guided"), ("warm", "startup"),
                                  ("startup",)]))
    warm = draw(st.integers(1, 4)) if "warm" in names else 0
    return Probe(setup_s=draw(st.floats(1.0, 600.0)),
                 phases={name: draw(phase) for name in names}, warm_trials=warm,
                 startup_trials=draw(st.integers(warm, 16)), probe_images=min(val, 128),
                 val_images=val, discordance=draw(st.floats(0.01, 0.5)),
                 discordance_from="assumed", machine="test")


def _study_seconds(p: Probe, trials: int, steps: int) -> float:
    """The plan's promise, summed trial by trial: a trial of a phase (the warm-start points,
    then the random start-up, then the guided rest; a phase the probe has no figures for
    costs as the last one it has) costs its probe mean, plus the extra recovery steps and
    the gate's scoring where it recovers, plus the extra validation images where scored."""
    gate_steps = steps // 3 // 10 * 10
    last = next(p.phases[n] for n in ("guided", "startup", "warm") if n in p.phases)
    total = 0.0
    for i in range(trials):
        name = ("warm" if i < p.warm_trials else "startup" if i < p.startup_trials
                else "guided")
        g = p.phases.get(name, last)
        gate = min(GATE_IMAGES, p.val_images) * g.gate_image_s if gate_steps else 0.0
        total += (g.cost_s + g.recovering * ((steps - PROBE_STEPS) * g.step_s + gate)
                  + g.scored * (p.val_images - p.probe_images) * g.image_s)
    return total


@settings(max_examples=200, deadline=None)
@given(st.data(), st.floats(0.05, 24.0))
def test_the_plan_fills_the_hours_and_no_more(data, hours):
    p = _probe(data.draw)
    image_s = (p.phases.get("warm") or p.guided).image_s
    budget = hours * 3600 - (p.setup_s + 2 * (p.val_images - p.probe_images) * image_s)
    if budget <= 0:
        with pytest.raises(ValueError, match="setup alone"):
            plan_study(p, hours)
        return
    made = plan_study(p, hours)
    assert MIN_STEPS <= made.steps <= MAX_STEPS and made.steps % 10 == 0
    assert made.gate_steps == made.steps // 3 // 10 * 10
    cost = _study_seconds(p, made.n_trials, made.steps)
    assert made.study_s == pytest.approx(cost, rel=1e-9)
    # As many trials as fit, and one more would not (unless even one does not fit).
    assert cost <= budget * (1 + 1e-9) or made.n_trials == 1
    assert _study_seconds(p, made.n_trials + 1, made.steps) > budget * (1 - 1e-9)
    # The longest recovery that still leaves MIN_TRIALS trials (between the bounds).
    if MIN_STEPS < made.steps < MAX_STEPS:
        assert _study_seconds(p, MIN_TRIALS, made.steps) <= budget * (1 + 1e-9)
        assert _study_seconds(p, MIN_TRIALS, made.steps + 10) > budget * (1 - 1e-9)
    assert made.short == (made.n_trials < MIN_TRIALS)
    # The first scoring pass tells a trial 10 pp behind beyond doubt (99 %), and no more.
    z99 = 2.5758293
    assert made.first_pass % 8 == 0 and made.first_pass >= 128
    assert z99 * math.sqrt(p.discordance / made.first_pass) <= 0.10 + 1e-9
    assert made.first_pass == 128 or z99 * math.sqrt(p.discordance / (made.first_pass - 8)) > 0.10
    assert made.half_width == pytest.approx(1.959964 * math.sqrt(p.discordance / p.val_images),
                                            rel=1e-6)


def _trial(number, start, seconds, times, enqueued=False, hits=None, precision="fp32"):
    at = datetime(2026, 1, 1) + timedelta(seconds=start)
    return FrozenTrial(
        number=number, state=TrialState.COMPLETE, value=None, values=[0.5],
        datetime_start=at, datetime_complete=at + timedelta(seconds=seconds),
        params={"precision": precision},
        distributions={"precision": CategoricalDistribution(["fp32", "int8"])},
        user_attrs={"times": times, **({"hits": pack_hits(hits)} if hits is not None else {})},
        system_attrs={"fixed_params": {"precision": precision}} if enqueued else {},
        intermediate_values={}, trial_id=number)


def test_the_probe_measures_each_phase_and_predicts_the_guided_one_from_the_seeds():
    images = 8
    base = [True, True, False, False, True, True, False, True]
    int8 = [True, False, False, False, True, True, False, True]  # differs on 1 of 8
    baseline = {"accuracy": 0.5, "hits": pack_hits(base),
                "fingerprint": {"cpu": "CPU", "flags": "avx2", "cores": 2}}
    scored = {"accuracy_s": 0.8}  # 0.1 s an image
    trials = [  # start 100 s after the probe began; cost 12, 5, 9, 4, 4, 4 s
        _trial(0, 100, 11, scored, enqueued=True, hits=base),
        _trial(1, 112, 4, scored, enqueued=True, hits=int8, precision="int8"),
        _trial(2, 117, 8, {"recovery_s": 5.0, **scored}, enqueued=True, hits=base),
        _trial(3, 126, 3.5, {"recovery_s": 3.0, **scored}, hits=base),
        _trial(4, 130, 3.5, {"recovery_s": 2.0, **scored}, hits=base),
        _trial(5, 134, 4, {}, hits=None),  # stopped before recovery and scoring
    ]
    probe = plan._measured(baseline, trials, started=datetime(2026, 1, 1).timestamp(),
                           images=images, val_images=100, startup=4, warm_steps=[0.05, 0.07],
                           gate_image_s=0.02)
    assert probe.setup_s == pytest.approx(100) and probe.trials == 6
    assert (probe.warm_trials, probe.startup_trials) == (3, 4)
    warm, startup, guided = (probe.phases[n] for n in ("warm", "startup", "guided"))
    # The warm-start points: their own costs; their step cost timed apart.
    assert warm == Phase(3, pytest.approx((12 + 5 + 9) / 3), pytest.approx(1 / 3), 1.0,
                         pytest.approx(0.06), pytest.approx(0.1), 0.02)
    # The random draws: their costs and their own recoveries (10 steps each).
    assert startup == Phase(3, pytest.approx(4.0), pytest.approx(2 / 3), pytest.approx(2 / 3),
                            pytest.approx(0.25), pytest.approx(0.1), 0.02)
    # The guided phase: as the warm-start point that recovered (trial 2).
    assert guided == Phase(1, pytest.approx(9.0), 1.0, 1.0, pytest.approx(0.06),
                           pytest.approx(0.1), 0.02)
    # Trials 0-2 warm, 3 random, then guided.
    assert probe.study_cost(5, PROBE_STEPS, 0, images) == pytest.approx(12 + 5 + 9 + 4 + 9)
    assert probe.discordance == pytest.approx(1 / 8) and "trial 1" in probe.discordance_from
    assert probe.machine == "CPU, avx2, 2 cores"
    # A sampler that is never guided (random) goes on as its random draws.
    never = plan._measured(baseline, trials, 0.0, images, 100, 0, [0.05], 0.02)
    assert "guided" not in never.phases and never.phase_of(40) == never.phases["startup"]


def test_the_best_rate_is_the_most_accurate_and_on_a_tie_the_largest():
    assert plan.best_rate(((8e-3, 0.0), (2e-3, 0.32), (5e-4, 0.30))) == 2e-3
    assert plan.best_rate(((8e-3, 0.4), (2e-3, 0.4), (5e-4, 0.1))) == 8e-3


@pytest.fixture
def quick(monkeypatch):
    """Latency timed briefly: the tests check what init writes, not how well it times."""
    monkeypatch.setattr(new_study, "RUNTIME", dict(new_study.RUNTIME, warmup=1, runs=3,
                                                   min_seconds=0.02))


def test_init_writes_a_study_that_fits_and_runs(tmp_path, jacquard_root, monkeypatch, quick,
                                                capsys):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "studies" / "mine.toml"
    assert main(["init", str(out), "--data", str(jacquard_root), "--hours", "0.5",
                 "--output-size", "96", "--split", "image"]) == 0
    said = capsys.readouterr().err
    config = load_study_config(out)
    assert config.name == "mine" and config.model == "ggcnn" and config.timeout == 1800
    # The timeout ends the study: n_trials leaves room for one faster than predicted.
    predicted = int(re.search(r"(\d+) trials in 0.5 h", " ".join(said.split()))[1])
    assert config.n_trials == math.ceil(1.5 * predicted)
    assert MIN_STEPS <= config.recovery_steps <= MAX_STEPS
    assert config.gate_steps == config.recovery_steps // 3 // 10 * 10
    assert config.recovery_crop == 96 and config.split == "image"
    text = out.read_text()
    assert f"{config.recovery_steps} recovery steps" in text and "trials an hour" in text
    # The peak rate is the candidate whose short recovery scored best, all of them listed.
    rates = re.search(r"recovery peak rate ([\d.e-]+), the best after \d+ steps.*?images: "
                      r"(.*?)\n", text, re.DOTALL)
    scores = dict((float(lr), float(acc)) for lr, acc in
                  re.findall(r"([\d.e-]+) -> ([\d.]+)", " ".join(rates[2].split("#"))))
    assert sorted(scores) == sorted(plan.LR_CANDIDATES)
    assert config.recovery_lr == float(rates[1]) == plan.best_rate(tuple(scores.items()))
    # The probe wrote nothing of the user's: no storage, artifacts or MLflow store here, and
    # no draft left beside the study file.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["jacquard", "studies"]
    assert [p.name for p in out.parent.iterdir()] == ["mine.toml"]
    # What it wrote is a study that runs.
    assert main(["search", str(out), "--n-trials", "1"]) == 0
    # A second init refuses to overwrite it.
    before = out.read_text()
    assert main(["init", str(out), "--data", str(jacquard_root), "--hours", "1"]) == 2
    assert "already exists" in capsys.readouterr().err and out.read_text() == before


@pytest.mark.parametrize("argv, message", [
    (["--hours", "0"], "--hours: must be > 0, got 0"),
    (["--hours", "1", "--option", "width=8"], "--option: keyword arguments are for --factory"),
    (["--hours", "1", "--factory", "m:f", "--option", "width"], "must be KEY=VALUE"),
    (["--hours", "1", "--factory", "m:f", "--option", "name=wide"], "the value must be TOML"),
])
def test_init_refuses_bad_requests_before_any_work(tmp_path, jacquard_root, argv, message,
                                                   capsys):
    out = tmp_path / "mine.toml"
    assert main(["init", str(out), "--data", str(jacquard_root), *argv]) == 2
    assert message in capsys.readouterr().err and not out.exists()


def test_init_names_bad_data_as_the_file_it_would_write(tmp_path, capsys):
    out = tmp_path / "mine.toml"
    assert main(["init", str(out), "--data", str(tmp_path / "nowhere"), "--hours", "1"]) == 2
    said = " ".join(capsys.readouterr().err.split())
    assert f"{out} (to be written): [data] root" in said and ".draft" not in said
    assert list(tmp_path.iterdir()) == []


def test_init_sizes_a_network_of_ones_own(tmp_path, jacquard_root, monkeypatch, quick):
    from test_own_network import USER_MODULE

    import grasp.models

    monkeypatch.setattr(grasp.models, "_REGISTRY", dict(grasp.models._REGISTRY))
    monkeypatch.chdir(tmp_path)
    studies = tmp_path / "studies"
    studies.mkdir()
    (studies / "mynet.py").write_text(USER_MODULE)  # found beside the study file
    monkeypatch.syspath_prepend(str(studies))
    import mynet

    torch.manual_seed(0)
    torch.save(mynet.build(width=8).state_dict(), tmp_path / "weights.pt")
    sys.modules.pop("mynet", None)
    out = studies / "own.toml"
    assert main(["init", str(out), "--data", str(jacquard_root), "--hours", "2",
                 "--factory", "mynet:build", "--option", "width=8", "--checkpoint",
                 str(tmp_path / "weights.pt"), "--output-size", "96", "--split", "image"]) == 0
    config = load_study_config(out)
    assert config.model == "mynet:build" and config.model_options == {"width": 8}
    assert config.timeout == 7200 and config.n_trials >= 1
