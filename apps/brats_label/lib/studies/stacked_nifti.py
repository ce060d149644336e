"""A study's 4-channel NIfTI written channel by channel, each channel by the process that decoded it.

In NIfTI's (Fortran) order the voxels of an (X, Y, Z, C) volume are C blocks, one per channel, one after
another. A decoding process can therefore write its series' block straight into the file: the volume is
neither sent back to the server through a pipe (about 18 MB a series) nor copied again to be stacked.
The header goes in last, once every block's type is known.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import NamedTuple, Tuple

import numpy as np

from ..runtime.atomic import nifti_image

BLOCK_DTYPES = (np.dtype(np.int16), np.dtype(np.uint16))  # what a series decodes to when it does not rescale


def nifti_header(shape: Tuple[int, ...], dtype: np.dtype, affine: np.ndarray) -> bytes:
    """The header (and the empty extension flag) ``atomic.write_nifti`` writes for such a volume."""
    header = nifti_image(np.empty((0,), dtype=dtype), affine).header  # the data is never read: only its type
    header.set_data_shape(shape)
    header.set_slope_inter(1.0, 0.0)  # stored values as they are, as nibabel writes unscaled data
    header.set_data_offset(0)  # nibabel then places the data right after the header
    out = io.BytesIO()
    header.write_to(out)
    return out.getvalue()


class StackedNiftiFile(NamedTuple):
    """Where each channel's block goes. Picklable: decoding processes receive it."""

    path: str
    shape: Tuple[int, int, int]  # (X, Y, Z) of the reference grid
    channels: int
    affine: np.ndarray  # RAS of the reference grid
    header_bytes: int

    @classmethod
    def create(cls, path: Path, shape: Tuple[int, int, int], channels: int, affine: np.ndarray) -> StackedNiftiFile:
        """An empty file of the final size (its blocks 16-bit; the header is written by ``finish``)."""
        header_bytes = len(nifti_header((*shape, channels), BLOCK_DTYPES[0], affine))
        target = cls(str(path), tuple(int(n) for n in shape), channels, np.asarray(affine, dtype=float), header_bytes)  # type: ignore[arg-type]
        with open(path, "wb") as f:
            f.truncate(target.offset(channels))
        return target

    def offset(self, channel: int) -> int:
        return self.header_bytes + channel * int(np.prod(self.shape)) * BLOCK_DTYPES[0].itemsize

    def takes(self, volume: np.ndarray, affine: np.ndarray) -> bool:
        """Whether a decoded series fits its block as it is: the reference grid, 16-bit stored values."""
        return volume.shape == self.shape and volume.dtype in BLOCK_DTYPES and np.allclose(affine, self.affine, atol=1e-3)

    def write_block(self, channel: int, volume: np.ndarray) -> None:
        """Write one channel's voxels (any process; the blocks do not overlap)."""
        data = np.asfortranarray(volume).ravel(order="F").view(np.uint8).data
        fd = os.open(self.path, os.O_WRONLY)
        try:
            written, offset = 0, self.offset(channel)
            while written < len(data):
                written += os.pwrite(fd, data[written:], offset + written)
        finally:
            os.close(fd)

    def read_block(self, channel: int, dtype: np.dtype) -> np.ndarray:
        """One channel's voxels as written (to be stacked again when the channels do not share a type)."""
        count = int(np.prod(self.shape))
        with open(self.path, "rb") as f:
            f.seek(self.offset(channel))
            return np.fromfile(f, dtype=dtype, count=count).reshape(self.shape, order="F")

    def finish(self, dtype: np.dtype) -> None:
        """Write the header once every block holds ``dtype`` voxels: the file is then a complete NIfTI."""
        header = nifti_header((*self.shape, self.channels), dtype, self.affine)
        if len(header) != self.header_bytes:
            raise RuntimeError(f"the NIfTI header is {len(header)} bytes, {self.header_bytes} were reserved")
        with open(self.path, "r+b") as f:
            f.write(header)
