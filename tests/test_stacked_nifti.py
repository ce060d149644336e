"""A study's NIfTI written block by block, by several writers, is the file nibabel writes for the stacked volume."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import nibabel as nib
import numpy as np
import pytest

from lib.runtime.atomic import write_nifti
from lib.studies.stacked_nifti import StackedNiftiFile

SHAPE = (24, 20, 12)
AFFINE = np.array([[-1.0, 0, 0, 120], [0, -1.0, 0, 120], [0, 0, 1.2, -70], [0, 0, 0, 1]])


@pytest.mark.parametrize("dtype", [np.int16, np.uint16])
def test_blocks_written_at_once_make_the_same_file_as_the_stacked_volume(tmp_path, dtype):
    rng = np.random.default_rng(3)
    channels = [rng.integers(0, 3000, SHAPE).astype(dtype) for _ in range(4)]
    target = StackedNiftiFile.create(tmp_path / "blocks.nii", SHAPE, 4, AFFINE)
    with ThreadPoolExecutor(4) as writers:
        list(writers.map(lambda i: target.write_block(i, channels[i]), [3, 1, 0, 2]))
    target.finish(np.dtype(dtype))
    write_nifti(np.stack(channels, axis=-1), AFFINE, tmp_path / "stacked.nii", durable=False)
    assert (tmp_path / "blocks.nii").read_bytes() == (tmp_path / "stacked.nii").read_bytes()
    image = nib.load(tmp_path / "blocks.nii")
    assert np.array_equal(np.asarray(image.dataobj)[..., 2], channels[2]) and np.allclose(image.affine, AFFINE)
    assert np.array_equal(target.read_block(1, np.dtype(dtype)), channels[1])


def test_only_a_series_on_the_grid_with_stored_values_goes_into_a_block(tmp_path):
    target = StackedNiftiFile.create(tmp_path / "blocks.nii", SHAPE, 4, AFFINE)
    fits = np.zeros(SHAPE, np.int16)
    assert target.takes(fits, AFFINE)
    assert not target.takes(fits.astype(np.float32), AFFINE), "rescaled to float: stacked by the server"
    assert not target.takes(np.zeros((24, 20, 13), np.int16), AFFINE), "another grid: resampled by the server"
    shifted = AFFINE.copy()
    shifted[0, 3] += 0.5
    assert not target.takes(fits, shifted)
