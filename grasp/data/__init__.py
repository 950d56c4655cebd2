"""Grasp datasets: Cornell, Jacquard (and the simulated dataset, written in Jacquard format)."""

from pathlib import Path

from grasp.data.base import (
    COLOUR_CONTRACT,
    INPUT_CONTRACT,
    INPUTS,
    TEST_FRACTION,
    VAL_FRACTION,
    DatasetFileError,
    GraspDataset,
    GraspSubset,
    Sample,
    has_preset_split,
    image_digests,
    image_name,
    network_input,
    normalise_depth,
    read_depth,
    split,
)
from grasp.data.cornell import CornellDataset, read_cornell_grasps
from grasp.data.jacquard import JacquardDataset, read_jacquard_grasps

__all__ = [
    "COLOUR_CONTRACT",
    "DATASET_FORMATS",
    "INPUTS",
    "INPUT_CONTRACT",
    "TEST_FRACTION",
    "VAL_FRACTION",
    "CornellDataset",
    "DatasetFileError",
    "GraspDataset",
    "GraspSubset",
    "JacquardDataset",
    "Sample",
    "has_preset_split",
    "image_digests",
    "image_name",
    "load_dataset",
    "network_input",
    "normalise_depth",
    "read_cornell_grasps",
    "read_depth",
    "read_jacquard_grasps",
    "split",
]

DATASET_FORMATS = {"cornell": CornellDataset, "jacquard": JacquardDataset}


def load_dataset(fmt: str, root: str | Path, output_size: int = 300,
                 objects: str | Path | None = None, skip_nan_rectangles: bool = False,
                 input: str = "depth") -> GraspDataset:
    """A dataset by format name (``cornell`` or ``jacquard``; the simulator writes Jacquard),
    read as ``input`` (depth, or rgbd: depth then its colour image). Cornell only:
    ``objects``, its image -> object table (object-wise splits), and
    ``skip_nan_rectangles`` (the real dataset's rectangles with NaN corners)."""
    try:
        cls = DATASET_FORMATS[fmt]
    except KeyError:
        raise ValueError(
            f"Unknown dataset format {fmt!r}; valid formats are: {', '.join(DATASET_FORMATS)}."
        ) from None
    if fmt != "cornell":
        if objects or skip_nan_rectangles:
            raise ValueError(f"an object table and skipping NaN rectangles apply to Cornell "
                             f"only, not to {fmt!r} (a Jacquard object is its folder).")
        return cls(root, output_size=output_size, input=input)
    return cls(root, output_size=output_size, objects_file=objects,
               strict=not skip_nan_rectangles, input=input)
