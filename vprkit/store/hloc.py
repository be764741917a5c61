"""hloc's global-feature HDF5 layout (cvg/Hierarchical-Localization), which ``vprkit export
hloc`` writes: one group per image, named by the image name (a ``/`` in it makes nested groups),
holding the dataset ``global_descriptor`` of shape (D,). hloc's ``pairs_from_retrieval`` lists
the names from the groups that hold it and ranks by dot product."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from vprkit.errors import VprkitError, shown

HLOC_KEY = "global_descriptor"  # the dataset hloc reads in each image's group


class GlobalFeatureWriter:
    """A new hloc global-feature file at ``path`` (created exclusively: never through a planted
    link); ``add`` one descriptor per image name; use as a context manager."""

    def __init__(self, path: Path, label: Path):
        self.path = path
        self.label = label  # the output's final name, for messages
        self.h5 = h5py.File(path, "x")  # O_EXCL

    def add(self, name: str, descriptor: np.ndarray) -> None:
        """``name``'s group with its (D,) float32 ``global_descriptor``."""
        try:
            self.h5.create_dataset(f"{name}/{HLOC_KEY}", data=np.asarray(descriptor, np.float32))
        except (ValueError, KeyError, TypeError) as err:
            raise VprkitError(f"cannot store '{shown(name, 200)}' in {self.label}: {err}") from None

    def __enter__(self) -> GlobalFeatureWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.h5.close()
