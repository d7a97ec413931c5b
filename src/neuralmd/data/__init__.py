"""Labelled frames: reading, writing, datasets."""

from .dataset import FrameDataset, reference_energies
from .io import read_frames, write_frames

__all__ = ["FrameDataset", "reference_energies", "read_frames", "write_frames"]
