"""A simulated parallel-jaw gripper and one grasp trial: descend, close, lift, shake.

The gripper is a small pybullet multibody on a fixed (invisible) base placed above the
grasp: a prismatic joint along the jaw axis for the shake, a prismatic lift joint carrying
the palm, and two prismatic fingers closed by force-limited motors. Motor speeds are capped
with the motors' ``maxVelocity`` (capping joint velocities in the dynamics throws objects).
Each trial rebuilds the scene from its data, so trials are independent and repeatable.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pybullet as pb

from grasp.rectangles import Grasp
from grasp.sim.scene import CAMERA, PARTNER_FRICTION, Camera, Scene, load_scene

__all__ = ["GRIPPER", "GraspPose", "GripperSpec", "execute_grasp", "pose_from_grasp"]


@dataclass(frozen=True)
class GripperSpec:
    """Geometry and forces of the gripper; ``force`` is the grip force per finger (N)."""

    max_opening: float = 0.10
    finger_thickness: float = 0.01
    jaw_width: float = 0.02
    finger_height: float = 0.045
    force: float = 20.0
    friction: float = PARTNER_FRICTION
    grasp_depth: float = 0.015
    lift: float = 0.12
    shake: float = 0.03
    shake_speed: float = 0.8


GRIPPER = GripperSpec()


@dataclass(frozen=True)
class GraspPose:
    """A top-down grasp in the world: fingertip height ``z``, yaw of the closing axis."""

    x: float
    y: float
    z: float
    yaw: float
    opening: float


def pose_from_grasp(grasp: Grasp, depth: np.ndarray, camera: Camera = CAMERA,
                    spec: GripperSpec = GRIPPER) -> GraspPose:
    """Pixels -> gripper pose: the depth at the grasp centre gives the surface height; the
    fingertips go ``grasp_depth`` below it (never into the table)."""
    size = depth.shape[0]
    r = int(np.clip(round(grasp.center[0]), 0, size - 1))
    c = int(np.clip(round(grasp.center[1]), 0, size - 1))
    surface = float(depth[r, c])
    x, y, z_top = camera.pixel_to_world(grasp.center[0], grasp.center[1], surface)
    opening = grasp.length * camera.metres_per_pixel(camera.height)
    opening = float(np.clip(opening, 0.01, spec.max_opening))
    z = max(0.004, z_top - spec.grasp_depth)
    # Image angles are counter-clockwise on screen; the image's right is world +x and its
    # top is world +y, so the angle is the world yaw of the closing axis.
    return GraspPose(x, y, z, grasp.angle, opening)


def _build_gripper(client: int, pose: GraspPose, spec: GripperSpec, start_height: float
                   ) -> int:
    fh, th, jw = spec.finger_height, spec.finger_thickness, spec.jaw_width
    palm_half = [spec.max_opening / 2 + th, jw / 2, 0.01]
    palm = pb.createCollisionShape(pb.GEOM_BOX, halfExtents=palm_half,
                                   collisionFramePosition=[0, 0, fh + 0.01],
                                   physicsClientId=client)
    left = pb.createCollisionShape(pb.GEOM_BOX, halfExtents=[th / 2, jw / 2, fh / 2],
                                   collisionFramePosition=[-th / 2, 0, fh / 2],
                                   physicsClientId=client)
    right = pb.createCollisionShape(pb.GEOM_BOX, halfExtents=[th / 2, jw / 2, fh / 2],
                                    collisionFramePosition=[th / 2, 0, fh / 2],
                                    physicsClientId=client)
    body = pb.createMultiBody(
        baseMass=0, baseCollisionShapeIndex=-1, baseVisualShapeIndex=-1,
        basePosition=[pose.x, pose.y, 0.0],
        baseOrientation=pb.getQuaternionFromEuler([0, 0, pose.yaw]),
        linkMasses=[0.2, 0.3, 0.05, 0.05],
        linkCollisionShapeIndices=[-1, palm, left, right],
        linkVisualShapeIndices=[-1] * 4,
        linkPositions=[[0, 0, 0]] * 4,
        linkOrientations=[[0, 0, 0, 1]] * 4,
        linkInertialFramePositions=[[0, 0, 0]] * 4,
        linkInertialFrameOrientations=[[0, 0, 0, 1]] * 4,
        linkParentIndices=[0, 1, 2, 2],
        linkJointTypes=[pb.JOINT_PRISMATIC] * 4,
        linkJointAxis=[[1, 0, 0], [0, 0, 1], [1, 0, 0], [1, 0, 0]],
        physicsClientId=client,
    )
    for link in (2, 3):
        pb.changeDynamics(body, link, lateralFriction=spec.friction, physicsClientId=client)
    half = pose.opening / 2
    for joint, value in ((0, 0.0), (1, start_height), (2, -half), (3, half)):
        pb.resetJointState(body, joint, value, physicsClientId=client)
    return body


def _drive(client: int, body: int, joint: int, target: float, force: float, speed: float
           ) -> None:
    pb.setJointMotorControl2(body, joint, pb.POSITION_CONTROL, targetPosition=target,
                             force=force, maxVelocity=speed, physicsClientId=client)


def _run(client: int, seconds: float) -> None:
    for _ in range(round(seconds * 240)):
        pb.stepSimulation(physicsClientId=client)


def _pinched(client: int, body: int, objects: list[int | None]) -> list[int]:
    """The objects touching both fingers."""
    return [obj for obj in objects if obj is not None and {2, 3} <= {
        c[3] for c in pb.getContactPoints(body, obj, physicsClientId=client)}]


def execute_grasp(client: int, scene: Scene, pose: GraspPose, spec: GripperSpec = GRIPPER,
                  stop_early: bool = True) -> bool:
    """Rebuilds ``scene``, executes the grasp and says whether an object is still held
    between both fingers, lifted, after the shake.

    A grasp whose closed fingers pinch nothing has failed: it stops there instead of
    lifting and shaking an empty gripper (a third of all trials, 60 % of their physics;
    labels stay identical, tested against ``stop_early=False``)."""
    reach = spec.max_opening + 0.1
    objects = load_scene(client, scene, near=(pose.x, pose.y, reach))
    body = _build_gripper(client, pose, spec, pose.z + 0.06)
    half = pose.opening / 2
    _drive(client, body, 0, 0.0, 200, spec.shake_speed)
    _drive(client, body, 2, -half, 50, 0.2)
    _drive(client, body, 3, half, 50, 0.2)
    # Descend gently: a finger landing on an object stops instead of crushing through it.
    _drive(client, body, 1, pose.z, 15, 0.3)
    _run(client, 0.25)
    for joint in (2, 3):
        _drive(client, body, joint, 0.0, spec.force, 0.2)
    _run(client, 0.3)
    if stop_early and not _pinched(client, body, objects):
        return False
    _drive(client, body, 1, pose.z + spec.lift, 200, 0.4)
    _run(client, 0.4)
    for target in (spec.shake, -spec.shake, 0.0):
        _drive(client, body, 0, target, 200, spec.shake_speed)
        _run(client, 0.12)
    start = {obj: placed.position[2] for obj, placed in zip(objects, scene.objects, strict=True)}
    return any(pb.getBasePositionAndOrientation(obj, physicsClientId=client)[0][2]
               >= start[obj] + spec.lift / 2 for obj in _pinched(client, body, objects))
