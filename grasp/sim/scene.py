"""Seeded tabletop scenes in pybullet: objects dropped on a plane, seen by a top-down camera.

A scene is plain data (:class:`Scene`): which objects, at what scale and mass, and where
they came to rest. Everything else — the depth image, the grasp trials — rebuilds the
physics world from that data, because ``restoreState`` does not give bit-identical trials.
The 1000 ``pybullet_data/random_urdfs`` objects are split object-wise by a fixed rule
(``id % 10``: 0–7 train, 8 val, 9 test), so held-out scenes show objects never trained on.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass

import numpy as np
import pybullet as pb
import pybullet_data

__all__ = [
    "BROKEN_OBJECTS",
    "CAMERA",
    "Camera",
    "PlacedObject",
    "Scene",
    "connect",
    "generate_scene",
    "load_scene",
    "object_ids",
    "render",
    "split_of_object",
]

#: Objects whose meshes break the simulation (NaN vertices).
BROKEN_OBJECTS = frozenset({168})
SPLITS = ("train", "val", "test")


def split_of_object(object_id: int) -> str:
    """The fixed object-wise split: ``id % 10`` 0–7 train, 8 val, 9 test."""
    rest = object_id % 10
    return "train" if rest < 8 else "val" if rest == 8 else "test"


def object_ids(split: str) -> list[int]:
    """Usable object ids of a split."""
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}; valid splits are: {', '.join(SPLITS)}.")
    return [i for i in range(1000) if split_of_object(i) == split and i not in BROKEN_OBJECTS]


@dataclass(frozen=True)
class Camera:
    """A pinhole camera looking straight down at the table's origin."""

    height: float = 0.45
    fov_deg: float = 40.0
    size: int = 300
    near: float = 0.1
    far: float = 2.0

    @property
    def focal_px(self) -> float:
        return self.size / 2 / math.tan(math.radians(self.fov_deg) / 2)

    def pixel_to_world(self, row: float, col: float, depth: float) -> tuple[float, float, float]:
        """A pixel at a metric depth (distance along the optical axis) -> world (x, y, z)."""
        centre = (self.size - 1) / 2
        x = (col - centre) * depth / self.focal_px
        y = -(row - centre) * depth / self.focal_px
        return x, y, self.height - depth

    def world_to_pixel(self, x: float, y: float) -> tuple[float, float]:
        """Table-plane (z = 0) world point -> (row, col)."""
        centre = (self.size - 1) / 2
        return centre - y * self.focal_px / self.height, centre + x * self.focal_px / self.height

    def metres_per_pixel(self, depth: float) -> float:
        return depth / self.focal_px


CAMERA = Camera()


@dataclass(frozen=True)
class PlacedObject:
    """One object of a scene and its resting pose (centre-of-mass frame, as pybullet reports)."""

    object_id: int
    scale: float
    mass: float
    position: tuple[float, float, float]
    orientation: tuple[float, float, float, float]


@dataclass(frozen=True)
class Scene:
    """A settled scene: enough to rebuild it exactly."""

    seed: int
    split: str
    objects: tuple[PlacedObject, ...]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Scene:
        objects = tuple(
            PlacedObject(o["object_id"], o["scale"], o["mass"], tuple(o["position"]),
                         tuple(o["orientation"])) for o in data["objects"])
        return cls(int(data["seed"]), data["split"], objects)


#: Bullet multiplies the friction coefficients of the two bodies in contact: objects get
#: 0.5 and the table and fingers 1.0, so every contact has an effective friction of 0.5.
#: Objects also need rolling/spinning friction to come to rest instead of rolling away.
FRICTION = 0.5
PARTNER_FRICTION = 1.0
ROLLING_FRICTION = 0.001
SPINNING_FRICTION = 0.001


def connect() -> int:
    """A headless physics client (one per process)."""
    return pb.connect(pb.DIRECT)


def _urdf(object_id: int) -> str:
    return os.path.join(pybullet_data.getDataPath(), "random_urdfs",
                        f"{object_id:03d}", f"{object_id:03d}.urdf")


def _reset_world(client: int) -> None:
    pb.resetSimulation(physicsClientId=client)
    pb.setGravity(0, 0, -9.81, physicsClientId=client)
    pb.setPhysicsEngineParameter(fixedTimeStep=1 / 240, numSolverIterations=50,
                                 deterministicOverlappingPairs=1, physicsClientId=client)
    plane = pb.loadURDF(os.path.join(pybullet_data.getDataPath(), "plane.urdf"),
                        physicsClientId=client)
    pb.changeDynamics(plane, -1, lateralFriction=PARTNER_FRICTION, physicsClientId=client)


def _load_object(client: int, obj: PlacedObject) -> int:
    body = pb.loadURDF(_urdf(obj.object_id), obj.position, obj.orientation,
                       globalScaling=obj.scale, physicsClientId=client)
    pb.resetBasePositionAndOrientation(body, obj.position, obj.orientation,
                                       physicsClientId=client)
    pb.changeDynamics(body, -1, mass=obj.mass, lateralFriction=FRICTION,
                      rollingFriction=ROLLING_FRICTION, spinningFriction=SPINNING_FRICTION,
                      physicsClientId=client)
    return body


def load_scene(client: int, scene: Scene, near: tuple[float, float, float] | None = None
               ) -> list[int | None]:
    """Rebuilds a settled scene from scratch; returns the object body ids in scene order.

    With ``near=(x, y, radius)`` only objects within ``radius`` of (x, y) are loaded (the
    others are ``None``): a grasp trial needs no physics for objects out of its reach.
    """
    _reset_world(client)
    bodies: list[int | None] = []
    for o in scene.objects:
        far = near is not None and math.hypot(o.position[0] - near[0],
                                              o.position[1] - near[1]) > near[2]
        bodies.append(None if far else _load_object(client, o))
    return bodies


def generate_scene(client: int, seed: int, split: str, max_objects: int = 5,
                   spread: float = 0.09) -> Scene:
    """Drops 1..``max_objects`` random objects of ``split`` and lets them settle."""
    rng = np.random.default_rng(seed)
    candidates = object_ids(split)
    count = int(rng.integers(1, max_objects + 1))
    dropped = []
    for k, object_id in enumerate(rng.choice(candidates, size=count, replace=False)):
        roll, pitch, yaw = rng.uniform(-math.pi, math.pi, 3)
        dropped.append(PlacedObject(
            int(object_id), float(rng.uniform(0.5, 0.8)), float(rng.uniform(0.05, 0.4)),
            (float(rng.uniform(-spread, spread)), float(rng.uniform(-spread, spread)),
             0.06 + 0.06 * k),
            tuple(pb.getQuaternionFromEuler((roll, pitch, yaw))),
        ))
    _reset_world(client)
    bodies = [_load_object(client, o) for o in dropped]
    for _ in range(240 * 2):
        pb.stepSimulation(physicsClientId=client)
    settled = []
    for body, obj in zip(bodies, dropped, strict=True):
        pos, orn = pb.getBasePositionAndOrientation(body, physicsClientId=client)
        settled.append(PlacedObject(obj.object_id, obj.scale, obj.mass, tuple(pos), tuple(orn)))
    return Scene(seed, split, tuple(settled))


def render(client: int, camera: Camera = CAMERA) -> tuple[np.ndarray, np.ndarray]:
    """Metric depth (metres along the optical axis, float32) and the segmentation mask
    (pybullet body id per pixel; 0 is the plane, -1 nothing)."""
    depth, mask, _ = render_view(client, camera)
    return depth, mask


def render_view(client: int, camera: Camera = CAMERA
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`render`'s depth and mask, and the colour image of the same view (red, green,
    blue, uint8 [S, S, 3]) from the same call."""
    view = pb.computeViewMatrix([0, 0, camera.height], [0, 0, 0], [0, 1, 0])
    proj = pb.computeProjectionMatrixFOV(camera.fov_deg, 1.0, camera.near, camera.far)
    _, _, rgba, buffer, seg = pb.getCameraImage(
        camera.size, camera.size, view, proj, renderer=pb.ER_TINY_RENDERER,
        physicsClientId=client)
    size = camera.size
    buffer = np.asarray(buffer, dtype=np.float64).reshape(size, size)
    # OpenGL's non-linear depth buffer -> metric distance along the optical axis.
    near, far = camera.near, camera.far
    depth = far * near / (far - (far - near) * buffer)
    colour = np.asarray(rgba, dtype=np.uint8).reshape(size, size, 4)[..., :3]
    return (depth.astype(np.float32), np.asarray(seg, dtype=np.int32).reshape(size, size),
            np.ascontiguousarray(colour))
