"""Simulated grasp success: the number that tells whether a model's grasps really work.

The rectangle metric can be fooled (an under-trained GG-CNN scored 63 % on it but only
random-level success here), so every model is also scored by executing its best grasp on
held-out scenes (objects never seen in training) and counting the grasps that hold.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pybullet as pb
import torch
from rich.console import Console
from rich.progress import Progress
from skimage.transform import resize
from statsmodels.stats.proportion import proportion_confint

from grasp.data.base import normalised_input
from grasp.rectangles import Grasp, scored_grasps
from grasp.sim.candidates import random_candidates
from grasp.sim.generate import EVAL_SEED, scene_seed
from grasp.sim.gripper import execute_grasp, pose_from_grasp
from grasp.sim.scene import Scene, connect, generate_scene, load_scene, render_view
from grasp.synthesis import as_grasp

__all__ = ["SimResult", "artifact_policy", "evaluate_in_sim", "evaluate_policies_in_sim",
           "model_policy", "random_policy", "wilson_interval"]

#: A policy sees the metric depth image, the mask (for baselines) and the colour image of the
#: same view (for RGB-D models), and picks one grasp.
Policy = Callable[[np.ndarray, np.ndarray, np.ndarray], Grasp | None]


@dataclass(frozen=True)
class SimResult:
    """Grasp success over ``trials`` held-out scenes, with a 95 % Wilson interval."""

    successes: int
    trials: int

    @property
    def rate(self) -> float:
        return self.successes / self.trials if self.trials else float("nan")

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.successes, self.trials)

    def __str__(self) -> str:
        low, high = self.interval
        return f"{self.rate:.1%} [{low:.1%}, {high:.1%}] ({self.successes} of {self.trials})"


def wilson_interval(successes: int, trials: int, confidence: float = 0.95
                    ) -> tuple[float, float]:
    """The Wilson score interval (statsmodels): honest for small samples and rates near 0
    or 1."""
    if trials == 0:
        return (0.0, 1.0)
    low, high = proportion_confint(successes, trials, alpha=1 - confidence, method="wilson")
    return (float(low), float(high))


def model_policy(predict: Callable[[torch.Tensor], torch.Tensor],
                 input_size: int | None = None, channels: int = 1) -> Policy:
    """The grasp a robot executes from a predictor's maps ([1, C, S, S] normalised depth or
    RGB-D -> [1, 4, S, S]): the best peak, or the quality map's maximum. A predictor built
    for another ``input_size`` than the camera's sees the image resized, and its grasp is
    scaled back to the camera's pixels."""
    return _policy(lambda x: scored_grasps(predict(x).float().cpu().numpy()[0])[1], input_size,
                   channels)


def artifact_policy(predict_grasps: Callable[[torch.Tensor], np.ndarray],
                    input_size: int | None = None, channels: int = 1) -> Policy:
    """The grasp an artifact returns itself (``Artifact.grasp_predictor``: [1, 6], see
    grasp.synthesis), executed whether or not it cleared GG-CNN's 0.2, as a robot would."""
    return _policy(lambda x: as_grasp(predict_grasps(x)[0]), input_size, channels)


def _policy(grasp_of: Callable[[torch.Tensor], Grasp], input_size: int | None,
            channels: int) -> Policy:
    """The network's input from the view, as its data layer frames it: depth alone, or
    depth then the colour image (``channels`` 4), resized alike and normalised."""
    def policy(depth: np.ndarray, mask: np.ndarray, colour: np.ndarray) -> Grasp | None:
        size = input_size or depth.shape[0]
        scale = depth.shape[0] / size
        image = depth if channels == 1 else np.dstack([depth, colour]).astype(np.float32)
        if size != depth.shape[0]:
            image = resize(image, (size, size), order=1, preserve_range=True,
                           anti_aliasing=True).astype(np.float32)
        grasp = grasp_of(torch.from_numpy(normalised_input(image))[None])
        return grasp.scaled(scale) if scale != 1 else grasp

    return policy


def random_policy(seed: int = 0) -> Policy:
    """A random grasp on some object: the floor a model must clear."""
    rng = np.random.default_rng(seed)

    def policy(depth: np.ndarray, mask: np.ndarray, colour: np.ndarray) -> Grasp | None:
        found = random_candidates(mask, rng, 1)
        return found[0] if found else None

    return policy


def held_out_scene(client: int, index: int, split: str = "test") -> Scene:
    return generate_scene(client, scene_seed(EVAL_SEED, index), split)


def evaluate_in_sim(policy: Policy, scenes: int = 100, split: str = "test",
                    console: Console | None = None, progress: bool = False) -> SimResult:
    """Executes the policy's grasp once on each of ``scenes`` held-out scenes.

    A scene where the policy finds no grasp counts as a failure.
    """
    outcomes = evaluate_policies_in_sim({"policy": policy}, scenes, split, console,
                                        progress)["policy"]
    return SimResult(int(outcomes.sum()), scenes)


def evaluate_policies_in_sim(policies: dict[str, Policy], scenes: int = 100,
                             split: str = "test", console: Console | None = None,
                             progress: bool = False) -> dict[str, np.ndarray]:
    """Each policy's grasp executed once on each of the same ``scenes`` held-out scenes
    (seeds apart from every generated dataset's, objects of ``split`` only), so that their
    outcomes pair scene by scene. Returns one boolean outcome per scene per policy; a
    scene where a policy finds no grasp is a failure."""
    if scenes < 1:
        raise ValueError(f"`scenes >= 1` must hold, but got {scenes}.")
    client = connect()
    outcomes = {name: np.zeros(scenes, bool) for name in policies}
    try:
        with Progress(console=console or Console(stderr=True), disable=not progress,
                      transient=True) as bar:
            task = bar.add_task(f"simulated grasps ({len(policies)} models)", total=scenes)
            for index in range(scenes):
                scene = held_out_scene(client, index, split)
                load_scene(client, scene)
                depth, mask, colour = render_view(client)
                for name, policy in policies.items():
                    grasp = policy(depth, mask, colour)
                    if grasp is not None:
                        outcomes[name][index] = execute_grasp(client, scene,
                                                              pose_from_grasp(grasp, depth))
                bar.update(task, advance=1)
    finally:
        pb.disconnect(client)
    return outcomes
