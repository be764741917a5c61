"""Datasets in the benchmark layout, images, importing own photos, generated data."""
