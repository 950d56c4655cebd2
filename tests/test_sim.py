import json
import math

import numpy as np
import pytest

from grasp.data import JacquardDataset, split
from grasp.sim.candidates import antipodal_candidates
from grasp.sim.evaluate import evaluate_in_sim, held_out_scene, random_policy, wilson_interval
from grasp.sim.generate import generate_dataset, scene_split
from grasp.sim.gripper import execute_grasp, pose_from_grasp
from grasp.sim.scene import (
    BROKEN_OBJECTS,
    CAMERA,
    connect,
    generate_scene,
    load_scene,
    object_ids,
    render,
)
from search.cli import main


@pytest.fixture(scope="module")
def client():
    import pybullet as pb

    c = connect()
    yield c
    pb.disconnect(c)


def test_object_split_is_disjoint_and_skips_broken_meshes():
    sets = {s: set(object_ids(s)) for s in ("train", "val", "test")}
    assert not sets["train"] & sets["val"] and not sets["train"] & sets["test"]
    assert len(sets["train"]) + len(sets["val"]) + len(sets["test"]) == 1000 - len(BROKEN_OBJECTS)
    assert not BROKEN_OBJECTS & sets["train"]
    with pytest.raises(ValueError, match=r"'dev'.*train, val, test"):
        object_ids("dev")


def test_same_seed_same_depth_bit_for_bit(client):
    a = generate_scene(client, 11, "val")
    load_scene(client, a)
    depth_a, mask_a = render(client)
    b = generate_scene(client, 11, "val")
    load_scene(client, b)
    depth_b, _ = render(client)
    assert a == b
    assert np.array_equal(depth_a, depth_b)
    assert {o.object_id for o in a.objects} <= set(object_ids("val"))
    assert set(np.unique(mask_a)) == {0, *range(1, len(a.objects) + 1)}


def test_depth_is_metric_and_pixels_map_to_the_world(client):
    scene = generate_scene(client, 3, "train")
    load_scene(client, scene)
    depth, mask = render(client)
    table = depth[mask == 0]
    # The table (z = 0) lies straight below the camera: depth = height along the axis.
    assert np.median(table) == pytest.approx(CAMERA.height, abs=1e-3)
    assert depth[mask > 0].min() < CAMERA.height - 0.005
    for body, placed in enumerate(scene.objects, start=1):
        rows, cols = np.nonzero(mask == body)
        if len(rows) < 50:
            continue
        r, c = CAMERA.world_to_pixel(*placed.position[:2])
        # The projected centre of mass falls near the silhouette's centroid.
        assert abs(r - rows.mean()) < 12 and abs(c - cols.mean()) < 12
    x, y, z = CAMERA.pixel_to_world(10.0, 290.0, CAMERA.height)
    assert x > 0 and y > 0 and z == pytest.approx(0.0)


def test_labelled_grasps_beat_random_grasps_in_simulation():
    trial_client = connect()
    good = {}

    def labelled(depth, mask, colour):
        # The first antipodal candidate that succeeds when tried: a ground-truth label.
        index = len(good)
        scene = held_out_scene(trial_client, index)
        rng = np.random.default_rng(index)
        good[index] = None
        for body in range(1, len(scene.objects) + 1):
            for g in antipodal_candidates(mask, body, rng, 3):
                if execute_grasp(trial_client, scene, pose_from_grasp(g, depth)):
                    good[index] = g
                    return g
        return None

    truth = evaluate_in_sim(labelled, scenes=8)
    chance = evaluate_in_sim(random_policy(0), scenes=8)
    labelled_scenes = sum(g is not None for g in good.values())
    assert labelled_scenes >= 6
    # Trials are deterministic: a grasp that held when labelled holds again.
    assert truth.successes == labelled_scenes
    assert truth.rate > chance.rate + 0.3


def test_stopping_an_empty_grasp_early_keeps_every_outcome(client):
    scene = generate_scene(client, 8, "val")
    load_scene(client, scene)
    depth, mask = render(client)
    rng = np.random.default_rng(0)
    outcomes = []
    for body in range(1, len(scene.objects) + 1):
        for g in antipodal_candidates(mask, body, rng, 4):
            pose = pose_from_grasp(g, depth)
            early = execute_grasp(client, scene, pose)
            outcomes.append((early, execute_grasp(client, scene, pose, stop_early=False)))
    assert len(outcomes) >= 8
    assert any(full for _, full in outcomes) and not all(full for _, full in outcomes)
    assert [early for early, _ in outcomes] == [full for _, full in outcomes]


def test_wilson_interval_known_values():
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-3)
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-3)


def test_generate_writes_jacquard_format_and_resumes(tmp_path):
    out = tmp_path / "sim"
    summary = generate_dataset(out, scenes=2, per_object=2, progress=False)
    assert summary["scenes"] == 2
    first = out / "train" / "scene000000" / "scene.json"
    stamp = first.stat().st_mtime_ns
    # An interrupted run leaves a temporary folder: it is redone, finished scenes are not.
    (out / "train" / "scene000002.tmp").mkdir()
    code = main(["data", "sim", "--scenes", "3", "--out", str(out),
                 "--candidates-per-object", "2"])
    assert code == 0
    assert first.stat().st_mtime_ns == stamp
    assert not (out / "train" / "scene000002.tmp").exists()
    stats = [json.loads(p.read_text()) for p in sorted(out.glob("*/scene*/scene.json"))]
    assert [s["index"] for s in stats] == [0, 1, 2]
    assert all(s["trials"] >= s["candidates"] for s in stats)
    # The Jacquard loader reads it unchanged, with the object-wise preset split.
    ds = JacquardDataset(out)
    assert len(ds) == sum(s["good"] > 0 for s in stats) > 0
    assert split(ds, "preset")["train"] == list(range(len(ds)))
    x, y, _ = ds[0]
    assert x.shape == (1, 300, 300) and y[0].sum() > 0
    for path in out.glob("*/scene*/*_grasps.txt"):
        for line in path.read_text().splitlines():
            fields = [float(v) for v in line.split(";")]
            assert len(fields) == 5 and all(map(math.isfinite, fields))


def test_scene_split_rule():
    assert [scene_split(i) for i in (0, 7, 8, 9, 18, 19)] == [
        "train", "train", "val", "test", "val", "test"]


def test_bad_arguments_are_rejected(tmp_path):
    with pytest.raises(ValueError, match=r"`scenes >= 1` must hold, but got 0"):
        generate_dataset(tmp_path, scenes=0)


def test_splits_grow_only_the_held_out_sets(tmp_path):
    out = tmp_path / "sim"
    code = main(["data", "sim", "--scenes", "10", "--out", str(out), "--splits", "test",
                 "--candidates-per-object", "1"])
    assert code == 0
    assert [p.parent.name for p in sorted(out.glob("*/scene*/scene.json"))] == ["scene000009"]
    assert not (out / "train").exists() and not (out / "val").exists()
    with pytest.raises(ValueError, match=r"splits must be a non-empty subset of .*'tset'"):
        generate_dataset(tmp_path, scenes=10, splits=("tset",))
