"""Ensembles of stored descriptor files: concatenation and PCA (``vprkit combine``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from vprkit.lazy import lazy_exports

_EXPORTS = {
    "EnsembleTransform": "vprkit.ensemble.pca",
    "PCAParams": "vprkit.ensemble.pca",
    "PCA_FITS": "vprkit.ensemble.combining",
    "combine": "vprkit.ensemble.combining",
    "fit_pca": "vprkit.ensemble.pca",
}
__all__ = ["EnsembleTransform", "PCAParams", "PCA_FITS", "combine", "fit_pca"]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:
    from vprkit.ensemble.combining import (
        PCA_FITS,
        combine,
    )
    from vprkit.ensemble.pca import (
        EnsembleTransform,
        PCAParams,
        fit_pca,
    )
