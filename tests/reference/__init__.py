"""Oracles for the tests: independent re-implementations that vprkit is compared against.

Each module here imports nothing from vprkit (only torch, torchvision, numpy, faiss,
scikit-learn, PIL and the efficientnet packages), so that a bug in vprkit cannot hide in its own
reference. Tests import them as ``from reference.benchmark import ...`` (pytest puts ``tests/`` on
``sys.path``, as for ``helpers``).

- ``benchmark``: the Deep Visual Geo-localization Benchmark's network (backbones, aggregations,
  ``GeoLocalizationNet`` with its ``--l2`` and ``--fc_output_dim``), seeded weights, checkpoints
  in the shapes it saves, and its test loop.
- ``test_methods``: the benchmark's six test-time query methods (``--test_method``).

``tests/test_benchmark_compat.py`` checks that importing every module here imports no vprkit.
"""
