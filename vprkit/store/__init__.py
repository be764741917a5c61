"""The HDF5 descriptor file: one file per model, self-describing, written atomically.

This package is the only code that reads or writes the HDF5 layout; every other part of vprkit
goes through ``DescriptorFile`` (reading), ``writing`` / ``DescriptorWriter`` (writing) and the
``Header`` they share. Importing it loads numpy and h5py, not torch nor scikit-learn.

File format (``format = "vprkit.descriptors"``, ``format_version = 1``)
-----------------------------------------------------------------------

Root attributes:

=================  ==========================================================================
``format``         ``"vprkit.descriptors"``
``format_version`` ``1`` (a reader refuses any other version)
``vprkit_version`` the vprkit that wrote the file
``created``        creation time, ISO 8601 UTC (``2024-05-01T12:00:00+00:00``); a copy extended
                   with new scales keeps it. Indexes built from the file record it.
``complete``       false while the file is written (``<name>.partial``), true once renamed
``model``          JSON: backbone, aggregation, clusters, weights or checkpoint, ``output_dim``,
                   ``fingerprint`` (hash of the weights), ``backbone_fingerprint``,
                   ``netvlad_init`` (how k-means made NetVLAD's clusters, or null); for an
                   ensemble ``type = "ensemble"``, its ``inputs``, ``weights``, ``output_dim``
``aggregation``    JSON: the pyramid rule and its parameters (``{"type": "gem", "p": 3.0, ...}``,
                   ``{"type": "netvlad", ...}``, ``{"type": "ensemble"}``)
``dataset``        JSON: ``root``, ``split``, ``skipped_unparsable``; a shard adds ``shard =
                   {index, count, names_sha256, database_rows, database_total, queries_rows,
                   queries_total}``, a merged file ``merged_shards``
``preprocessing``  JSON: ``resize`` ([H, W] or null for each image's own size), ``normalize``
                   (mean, std), ``interpolation``, ``precision`` of inference
``dtype``          storage type of the descriptors: ``"float32"`` or ``"float16"``
=================  ==========================================================================

The five header attributes ``model``, ``aggregation``, ``dataset``, ``preprocessing`` and
``dtype`` are ``Header`` (``Header.to_attrs`` / ``Header.from_attrs``); a header attribute longer
than ``MAX_ATTR_CHARS`` characters is damage.

Datasets and groups (``<role>`` is ``database`` or ``queries``, N and M their image counts):

=====================================  ==============================================================
``/<role>/names``                      (N,) UTF-8 image paths relative to the role's folder
``/<role>/utm``                        (N, 2) float64 east, north (metres), finite
``/<role>/sha256``                     (N, 32) uint8 SHA-256 of each image file's bytes (since
                                       vprkit 0.2; absent in older files; an all-zero row is not
                                       known yet), checked when an extraction resumes or adds
                                       scales and when combine aligns inputs
``/scales/<s>/``                       one group per stored scale s >= 1 (image at H/s x W/s);
                                       attributes ``scale``, ``image_size`` (JSON [h, w] at that
                                       scale, or null at native size), ``rows_done_database`` and
                                       ``rows_done_queries`` (rows committed so far)
``/scales/<s>/<role>``                 (N, D) descriptors, ``dtype``, chunked by rows (about 1 MiB
                                       a chunk); D is the same at every scale
``/scales/<s>/stats/<role>/<name>``    (N, ...) per-image statistics from which a pyramid of
                                       several scales is formed (GeM: ``count`` (N,) int64 local
                                       features; NetVLAD: ``cluster_norms`` (N, K) float32)
``/scales/<s>/views/<view>``           query descriptors of a view other than ``hard_resize``
                                       (``vprkit.descriptors.views``): (M, D), or (5 M, D) for
                                       ``five_crops`` (row 5 q + c); the scale group's
                                       attributes ``rows_done_view_<view>`` (queries committed)
                                       and ``image_size_<view>`` (since vprkit 0.2; a file
                                       without views holds ``hard_resize`` alone)
``/scales/<s>/stats/views/<view>/...`` the view's per-row statistics, as for the roles
``/model/aggregation/<name>``          aggregation weights the descriptors were made with
                                       (NetVLAD clusters initialised by k-means), optional
``/combine``                           ensembles only: attribute ``spec`` (JSON ``{"inputs":
                                       [{file, scale, dim, model, dataset, pca}], "weights"}``)
``/combine/pca/<i>/``                  the PCA fitted for input i (absent: input kept as it is):
                                       datasets ``mean`` (D_i,), ``components`` (d, D_i),
                                       ``explained_variance`` (d,) float32; attributes ``whiten``,
                                       ``fitted_on``, ``rows``, ``method``
=====================================  ==============================================================

Reading: ``DescriptorFile`` checks, when it opens a file, every root attribute above, every scale's
attributes and the ``/combine`` record for their types, ranges and sizes (``vprkit.store.validate``;
the limits, such as image sides 1..16384, NetVLAD clusters 1..4096 and descriptors of at most 2^20
dimensions, are in ``vprkit.store.checks``): a value that is not so is one line naming the file and
the attribute (``gem.h5: header attribute 'model.clusters' is 'abc'; expected an integer
1..4096 ...``). Image names are resolved inside their role's folder only: a name that is empty,
absolute, or holds NUL or a ``..`` component is refused when the names are read (symbolic links
inside the dataset are followed: they are its owner's). What rebuilding the network needs (a
registered backbone and aggregation) is checked where it is rebuilt
(``vprkit.models.validate_model_config``).

Writing: a file is written as ``<name>.partial`` while ``<name>.lock`` is held (a second writer
is refused), and renamed to ``<name>`` once ``complete`` is true, so a file at the final path is
always whole. Rows are written block by block; after each block the data is flushed, then the
``rows_done_<role>`` counters of its scales, so an unfinished file holds exactly the committed
rows and an extraction resumes from them. A complete file is extended with new scales by
copying it to ``<name>.partial``. No step writes through a symbolic link.
"""

from vprkit.choices import ROLES
from vprkit.files import human_bytes, partial_path
from vprkit.store.format import (
    FORMAT,
    FORMAT_VERSION,
    HASH_BYTES,
    MAX_ATTR_CHARS,
    Header,
    chunk_rows,
    image_hashes,
    parse_scale_spec,
    parse_scales,
    spec_name,
)
from vprkit.store.output import Output, writing
from vprkit.store.reader import DescriptorFile
from vprkit.store.writer import DescriptorWriter

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "HASH_BYTES",
    "MAX_ATTR_CHARS",
    "ROLES",
    "DescriptorFile",
    "DescriptorWriter",
    "Header",
    "Output",
    "chunk_rows",
    "human_bytes",
    "image_hashes",
    "parse_scale_spec",
    "parse_scales",
    "partial_path",
    "spec_name",
    "writing",
]
