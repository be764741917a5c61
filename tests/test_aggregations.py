"""Per-op tests of the aggregation layers (smoke, shape, values against the oracle of
``tests/reference/benchmark.py``, exceptions, gradients)."""

import numpy as np
import pytest
import torch
from reference.benchmark import RefNetVLAD, ref_aggregation

from vprkit.errors import VprkitError
from vprkit.models.aggregations import GeM, NetVLAD, build_aggregation, pyramid


class TestGeM:
    def test_smoke_and_shape(self):
        out = GeM()(torch.rand(3, 16, 5, 7))
        assert out.shape == (3, 16)

    def test_matches_reference_with_learned_p(self):
        layer = GeM()
        with torch.no_grad():
            layer[1].p.fill_(2.3)
        reference = ref_aggregation("gem", features_dim=8)  # L2 norm, GeM, flatten
        with torch.no_grad():
            reference[1].p.fill_(2.3)
        x = torch.randn(2, 8, 4, 6)
        torch.testing.assert_close(layer(x), reference(x), rtol=1e-5, atol=1e-6)

    def test_state_dict_key_is_the_benchmarks(self):
        assert list(GeM().state_dict()) == ["1.p"]

    def test_gradient(self):
        layer = GeM().double()
        x = torch.rand(2, 4, 3, 3, dtype=torch.double, requires_grad=True)
        assert torch.autograd.gradcheck(layer, (x,))
        layer(x).sum().backward()
        assert layer[1].p.grad is not None and torch.isfinite(layer[1].p.grad).all()

    def test_stats_count_locations(self):
        _, stats = GeM().forward_with_stats(torch.rand(2, 4, 3, 5))
        assert stats["count"].tolist() == [15, 15]


class TestNetVLAD:
    def test_smoke_and_shape(self):
        out = NetVLAD(clusters=8, dim=16)(torch.randn(3, 16, 5, 7))
        assert out.shape == (3, 128)

    def test_normalisation(self):
        out = NetVLAD(clusters=8, dim=16)(torch.randn(3, 16, 5, 7))
        torch.testing.assert_close(out.norm(dim=1), torch.ones(3))
        blocks = out.view(3, 8, 16).norm(dim=2)
        torch.testing.assert_close(blocks, torch.full((3, 8), 8**-0.5))

    def test_matches_benchmark_loop(self):
        layer = NetVLAD(clusters=8, dim=16)
        torch.nn.init.normal_(layer.conv.weight)
        reference = RefNetVLAD(clusters_num=8, dim=16)
        reference.load_state_dict(layer.state_dict())  # the same conv and centroids
        x = torch.randn(2, 16, 4, 6)
        torch.testing.assert_close(layer(x), reference(x), rtol=1e-5, atol=1e-6)

    def test_state_dict_keys_are_the_benchmarks(self):
        assert sorted(NetVLAD(4, 8).state_dict()) == ["centroids", "conv.weight"]

    def test_wrong_channels(self):
        with pytest.raises(ValueError, match="16 channels got 8"):
            NetVLAD(clusters=4, dim=16)(torch.randn(1, 8, 2, 2))

    def test_gradient(self):
        layer = NetVLAD(clusters=3, dim=4).double()
        x = torch.randn(2, 4, 3, 3, dtype=torch.double, requires_grad=True)
        assert torch.autograd.gradcheck(layer, (x,))
        layer(x).sum().backward()
        assert layer.centroids.grad.abs().sum() > 0 and layer.conv.weight.grad.abs().sum() > 0

    def test_kmeans_initialisation(self):
        """Centroids are faiss k-means centres; weights are alpha x normalised centroids with
        alpha = -log(0.01) / mean(top-1 minus top-2 dot product), as in the benchmark."""
        import faiss

        rng = np.random.default_rng(0)
        feats = rng.standard_normal((400, 8)).astype(np.float32)
        feats /= np.linalg.norm(feats, axis=1, keepdims=True)
        layer = NetVLAD(clusters=4, dim=8)
        layer.init_from_descriptors(feats, seed=3)
        kmeans = faiss.Kmeans(8, 4, niter=100, seed=3)
        kmeans.train(feats)
        np.testing.assert_allclose(layer.centroids.detach().numpy(), kmeans.centroids, rtol=1e-6)
        unit = kmeans.centroids / np.linalg.norm(kmeans.centroids, axis=1, keepdims=True)
        dots = np.sort(unit @ feats.T, axis=0)
        alpha = -np.log(0.01) / np.mean(dots[-1] - dots[-2])
        np.testing.assert_allclose(layer.conv.weight.detach()[:, :, 0, 0].numpy(), alpha * unit, rtol=1e-5)

    def test_kmeans_needs_enough_features(self):
        with pytest.raises(VprkitError, match="at least 4 local features"):
            NetVLAD(clusters=4, dim=8).init_from_descriptors(np.ones((3, 8), np.float32))


def test_unknown_aggregation():
    with pytest.raises(VprkitError, match="unknown aggregation 'crn'"):
        build_aggregation("crn", 16)


@pytest.mark.parametrize("layer", [GeM(p=2.5), NetVLAD(clusters=6, dim=12)], ids=["gem", "netvlad"])
class TestPyramidFromStats:
    """The pyramid formed from stored descriptors + stats equals the network's own pyramid."""

    def test_equals_features_concatenated_then_aggregated(self, layer):
        torch.manual_seed(0)
        feats = [torch.randn(3, 12, 8, 10), torch.randn(3, 12, 4, 5), torch.randn(3, 12, 2, 3)]
        with torch.no_grad():
            if isinstance(layer, GeM):
                feats = [f.abs() for f in feats]
            joined = torch.cat([f.flatten(2) for f in feats], dim=2).unsqueeze(-1)
            direct = layer(joined).numpy()
            parts = [layer.forward_with_stats(f) for f in feats]
        params = layer.pyramid_params()
        for subset in ([0, 1], [0, 2], [0, 1, 2]):
            got = pyramid(
                params,
                [parts[i][0].numpy() for i in subset],
                [{k: v.numpy() for k, v in parts[i][1].items()} for i in subset],
            )
            with torch.no_grad():
                sub = torch.cat([feats[i].flatten(2) for i in subset], dim=2).unsqueeze(-1)
                expected = layer(sub).numpy()
            np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)
        assert direct.shape == got.shape

    def test_single_scale_is_unchanged(self, layer):
        with torch.no_grad():
            desc, stats = layer.forward_with_stats(torch.rand(2, 12, 3, 3))
        got = pyramid(layer.pyramid_params(), [desc.numpy()], [{k: v.numpy() for k, v in stats.items()}])
        np.testing.assert_array_equal(got, desc.numpy())
