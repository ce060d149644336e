"""NumPy volumes with RAS affines (nibabel's convention, used everywhere in this app) to SimpleITK images and back.

ITK's physical space is LPS and its arrays are (Z, Y, X); nibabel's is RAS and (X, Y, Z). Every registration in
this package goes through these two functions, so the conversion is written once.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def to_sitk(volume: np.ndarray, affine: np.ndarray, dtype: type = np.float32) -> sitk.Image:
    """(X, Y, Z) array on a RAS affine -> SimpleITK image in LPS."""
    lps = RAS_TO_LPS @ np.asarray(affine, dtype=float)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(volume, dtype=dtype).transpose(2, 1, 0)))
    image.SetSpacing([float(s) for s in spacing])
    image.SetDirection([float(v) for v in (lps[:3, :3] / spacing).ravel()])
    image.SetOrigin([float(v) for v in lps[:3, 3]])
    return image


def to_numpy(image: sitk.Image) -> np.ndarray:
    """SimpleITK image -> (X, Y, Z) array (the grid is the one it was resampled onto)."""
    return sitk.GetArrayFromImage(image).transpose(2, 1, 0)


def transform_to_ras(transform: sitk.Transform) -> np.ndarray:
    """A linear SimpleITK transform (LPS, fixed -> moving points) as a 4x4 RAS matrix, read off four points (any
    linear transform type, composite included)."""
    origin = np.asarray(transform.TransformPoint((0.0, 0.0, 0.0)))
    lps = np.eye(4)
    for axis in range(3):
        unit = [0.0, 0.0, 0.0]
        unit[axis] = 1.0
        lps[:3, axis] = np.asarray(transform.TransformPoint(tuple(unit))) - origin
    lps[:3, 3] = origin
    return RAS_TO_LPS @ lps @ RAS_TO_LPS
