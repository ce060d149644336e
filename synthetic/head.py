"""Studies as a scanner writes them: the whole head, each series in its own plane and slice thickness, the
patient moving between series, a bias field on each.

A BraTS-prepared study (``study.generate_study``: skull-stripped, four channels on one 1 mm grid) is the
ground truth; its raw twin puts scalp, fat, skull (cortical tables and fatty marrow), muscle, enhancing dura
and the superior sagittal sinus, the eyes and the neck around the same brain, and acquires it:

    T1c    3D axial, 1 mm: the reference, its grid is the truth's grid (padded to hold the head and neck)
    T1     2D axial, 1 x 1 x 5 mm
    T2     2D axial, 1 x 1 x 4 mm
    FLAIR  3D sagittal, 1 x 1 x 1.2 mm

Every series but the T1c is acquired after the patient moved: a rotation of 3 to 6 degrees about a random axis
through the head's centre and a shift of 3 to 6 mm. The motion is kept (``RawStudy.motion``) so that a
registration can be scored in millimetres, and so is the brain mask, so that a brain extraction can be scored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Tuple

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

from .anatomy import load_anatomy
from .cohort import CaseDesign
from .contrast import OUTPUT_SCALE, _bias_field, _rician
from .study import SyntheticStudy, generate_study

# Head tissues outside the brain, from the brain's surface outwards: (name, thickness mm).
LAYERS: Tuple[Tuple[str, float], ...] = (
    ("csf", 2.0),
    ("dura", 1.0),
    ("bone", 2.0),  # inner table
    ("marrow", 3.0),  # diploe: fatty marrow, bright on T1
    ("bone", 2.0),  # outer table
    ("muscle", 2.0),
    ("fat", 4.0),
    ("skin", 2.0),
)
# Relative intensity of each tissue on each sequence (white matter on T1 near 0.9, as in contrast.INTENSITY).
HEAD_INTENSITY: Dict[str, Dict[str, float]] = {
    "csf": {"t1": 0.30, "t1c": 0.30, "t2": 1.00, "flair": 0.12},
    "dura": {"t1": 0.45, "t1c": 1.20, "t2": 0.30, "flair": 0.45},  # dura enhances after contrast
    "sinus": {"t1": 0.35, "t1c": 1.50, "t2": 0.20, "flair": 0.30},  # slow venous flow: bright on T1c
    "bone": {"t1": 0.05, "t1c": 0.05, "t2": 0.05, "flair": 0.05},
    "marrow": {"t1": 1.05, "t1c": 1.05, "t2": 0.70, "flair": 0.80},
    "muscle": {"t1": 0.55, "t1c": 0.60, "t2": 0.35, "flair": 0.45},
    "fat": {"t1": 1.15, "t1c": 1.15, "t2": 0.85, "flair": 0.90},
    "skin": {"t1": 0.60, "t1c": 0.65, "t2": 0.55, "flair": 0.60},
    "eye": {"t1": 0.20, "t1c": 0.20, "t2": 1.10, "flair": 0.15},  # vitreous: water
}
PAD_BELOW_MM, PAD_ABOVE_MM = 40.0, 24.0  # the BraTS grid stops at the brainstem and just above the vertex
NECK_BELOW_MNI_Z = -50.0  # under this height the head becomes the neck
SPINAL_CANAL_MM = 5.0  # CSF, dura and bone around the brainstem where the neck begins
NECK_RADII_MM = (55.0, 60.0)  # half-widths of the neck's cross-section (left-right, front-back)
EYE_CENTRES_MNI = ((-33.0, 58.0, -38.0), (33.0, 58.0, -38.0))
EYE_RADIUS_MM = 12.0

# How each series is acquired: (plane, in-plane mm, slice mm). The T1c is the reference: 3D, 1 mm, axial.
RAW_PROTOCOL: Dict[str, Tuple[str, float, float]] = {
    "t1c": ("axial", 1.0, 1.0),
    "t1": ("axial", 1.0, 5.0),
    "t2": ("axial", 1.0, 4.0),
    "flair": ("sagittal", 1.0, 1.2),
}
MOTION_DEGREES = (3.0, 6.0)
MOTION_MM = (3.0, 6.0)
RAW_BIAS_STRENGTH = (0.25, 0.45)  # log-amplitude: a head coil's field over the whole head is stronger than over the brain
RAW_NOISE = 0.01  # Rician sigma of the series (relative to white matter on T1), on top of the study's own


@dataclass(frozen=True)
class RawStudy:
    """A raw study and its truth.

    ``series``: {channel: ((X, Y, Z) int16 volume, 4x4 RAS affine)}, each on its own grid.
    ``label`` and ``brain`` are on the T1c's grid (``series['t1c'][1]``).
    ``motion``: {channel: 4x4 RAS transform} taking a point of the T1c's anatomy to where the same anatomy is
    in that series' scanner space (identity for the T1c).
    ``clean``: the same study as BraTS delivers it (skull-stripped, on the BraTS grid).
    """

    case_id: str
    series: Dict[str, Tuple[np.ndarray, np.ndarray]]
    label: np.ndarray
    brain: np.ndarray
    motion: Dict[str, np.ndarray]
    clean: SyntheticStudy


def _pad(volume: np.ndarray, below: int, above: int) -> np.ndarray:
    return np.pad(volume, ((0, 0), (0, 0), (below, above)))


def head_tissues(brain: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """(X, Y, Z) array of tissue names ('' for air and the brain) around a brain mask on a 1 mm grid."""
    spacing = float(np.linalg.norm(affine[:3, 0]))
    outside_mm = ndimage.distance_transform_edt(~brain) * spacing
    tissue = np.full(brain.shape, "", dtype=object)
    edge = 0.0
    for name, thickness in LAYERS:
        tissue[(outside_mm > edge) & (outside_mm <= edge + thickness)] = name
        edge += thickness
    ijk = np.indices(brain.shape, dtype=np.float32).reshape(3, -1)
    world = (affine[:3, :3] @ ijk + affine[:3, 3:4]).reshape((3, *brain.shape))
    x, y, z = world
    # the superior sagittal sinus: the dura along the midline above the ventricles
    tissue[(tissue == "dura") & (np.abs(x) < 5.0) & (z > 20.0)] = "sinus"
    # the neck: an elliptic column of muscle in fat and skin under the skull base
    # (the brainstem keeps its sheath of CSF, dura and bone: the spinal canal)
    low = (z < NECK_BELOW_MNI_Z) & (outside_mm > SPINAL_CANAL_MM)
    centre_y = float(np.mean(y[brain])) - 10.0
    r = np.sqrt((x / NECK_RADII_MM[0]) ** 2 + ((y - centre_y) / NECK_RADII_MM[1]) ** 2)
    tissue[low & ~brain] = ""
    tissue[low & ~brain & (r <= 1.0)] = "skin"
    tissue[low & ~brain & (r <= 0.96)] = "fat"
    tissue[low & ~brain & (r <= 0.85)] = "muscle"
    tissue[low & ~brain & (r <= 0.25)] = "bone"  # the spine
    for centre in EYE_CENTRES_MNI:
        d = np.sqrt(sum((w - c) ** 2 for w, c in zip(world, centre)))
        tissue[(d <= EYE_RADIUS_MM) & ~brain] = "eye"
    return tissue


def _random_motion(rng: np.random.Generator, centre: np.ndarray) -> np.ndarray:
    """A rigid 4x4 transform: 3-6 degrees about a random axis through ``centre``, then 3-6 mm in a random direction."""
    axis = rng.normal(size=3)
    angle = np.deg2rad(rng.uniform(*MOTION_DEGREES))
    rotation = Rotation.from_rotvec(axis / np.linalg.norm(axis) * angle).as_matrix()
    shift = rng.normal(size=3)
    shift = shift / np.linalg.norm(shift) * rng.uniform(*MOTION_MM)
    transform = np.eye(4)
    transform[:3, :3] = rotation
    transform[:3, 3] = centre - rotation @ centre + shift
    return transform


def series_grid(plane: str, in_plane_mm: float, slice_mm: float, reference_shape: Tuple[int, ...], reference_affine: np.ndarray) -> Tuple[Tuple[int, int, int], np.ndarray]:
    """Shape and RAS affine of a series covering the reference's field of view, slices along the plane's normal
    (the third voxel axis, as a DICOM series stacks its slices)."""
    lo = reference_affine[:3, 3]
    extent = np.asarray(reference_shape, dtype=float) * np.linalg.norm(reference_affine[:3, :3], axis=0)
    axes = {"axial": (0, 1, 2), "sagittal": (1, 2, 0), "coronal": (0, 2, 1)}[plane]
    steps = (in_plane_mm, in_plane_mm, slice_mm)
    affine = np.eye(4)
    shape = []
    for column, (axis, step) in enumerate(zip(axes, steps)):
        affine[:3, column] = 0.0
        affine[axis, column] = step
        shape.append(int(np.floor(extent[axis] / step)))
    affine[:3, 3] = lo
    return tuple(shape), affine  # type: ignore[return-value]


def acquire(world: np.ndarray, world_affine: np.ndarray, shape: Tuple[int, int, int], affine: np.ndarray, motion: np.ndarray, slice_mm: float) -> np.ndarray:
    """Sample ``world`` on a series' grid after the patient moved by ``motion``; a thick slice averages the
    anatomy across its thickness (sub-slices 1 mm apart)."""
    steps = max(1, int(round(slice_mm)))
    offsets = (np.arange(steps) - (steps - 1) / 2.0) * (slice_mm / steps) / slice_mm  # in slice units
    to_world_voxels = np.linalg.inv(world_affine) @ np.linalg.inv(motion) @ affine
    ijk = np.indices(shape, dtype=np.float32).reshape(3, -1)
    out = np.zeros(int(np.prod(shape)), dtype=np.float32)
    for offset in offsets:
        points = ijk.copy()
        points[2] += offset
        coords = to_world_voxels[:3, :3] @ points + to_world_voxels[:3, 3:4]
        out += ndimage.map_coordinates(world, coords, order=1, mode="constant", cval=0.0)
    return (out / len(offsets)).reshape(shape)


def generate_raw_study(seed: int, index: int, case_id: str | None = None, design: CaseDesign | None = None) -> RawStudy:
    """The raw twin of ``generate_study(seed, index)`` at 1 mm; deterministic in its arguments."""
    clean = generate_study(seed, index, 1.0, case_id=case_id, design=design)
    anatomy = load_anatomy(1.0)
    below, above = int(PAD_BELOW_MM), int(PAD_ABOVE_MM)
    affine = anatomy.affine.copy()
    affine[:3, 3] = affine[:3, 3] - affine[:3, 2] * below
    brain = _pad(anatomy.brain, below, above)
    label = _pad(clean.label, below, above)
    tissue = head_tissues(brain, affine)
    rng = np.random.default_rng(np.random.SeedSequence([seed, index, 2]))
    head_centre = (affine @ np.append(np.mean(np.argwhere(brain), axis=0), 1.0))[:3]

    series: Dict[str, Tuple[np.ndarray, np.ndarray]] = {}
    motion: Dict[str, np.ndarray] = {}
    for channel, (plane, in_plane, slice_mm) in RAW_PROTOCOL.items():
        world = _pad(clean.images[channel].astype(np.float32), below, above)
        for name, levels in HEAD_INTENSITY.items():
            world[tissue == name] = levels[channel] * OUTPUT_SCALE
        head = tissue != ""
        world[head] *= 1.0 + 0.05 * rng.standard_normal(int(head.sum())).astype(np.float32)  # tissue texture
        world = ndimage.gaussian_filter(world, 0.5)  # partial volume at tissue edges
        move = np.eye(4) if channel == "t1c" else _random_motion(rng, head_centre)
        if channel == "t1c":
            shape, grid = brain.shape, affine
            image = world
        else:
            shape, grid = series_grid(plane, in_plane, slice_mm, brain.shape, affine)
            image = acquire(world, affine, shape, grid, move, slice_mm)
        image = image * _bias_field(image.shape, float(rng.uniform(*RAW_BIAS_STRENGTH)), rng)
        image = _rician(image / OUTPUT_SCALE, RAW_NOISE, rng) * OUTPUT_SCALE
        series[channel] = (np.clip(image, 0, np.iinfo(np.int16).max).astype(np.int16), grid)
        motion[channel] = move
    return RawStudy(clean.case_id, series, label, brain, motion, clean)
