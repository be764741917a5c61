"""The oracle for DINOv2 SALAD: upstream's ``VPRModel`` (``serizba/salad``) at inference, in plain torch.

It imports nothing from vprkit (torch and ``reference.dinov2`` only), so the tests that compare
``vprkit.models.zoo.salad`` with it compare two separate implementations. Written from the
architecture of ``models/backbones/dinov2.py``, ``models/aggregators/salad.py`` and
``hubconf.py`` (the released configuration), with the same module structure, so that
``RefVPRModel().state_dict()`` has the keys and shapes of the released ``dino_salad.ckpt``:

- ``RefDINOv2``: ``model`` (``RefDinoVisionTransformer``) run through
  ``prepare_tokens_with_masks``, the first ``12 - num_trainable_blocks`` blocks without
  gradients, the rest, the final ``norm`` (``norm_layer``), split into the class token and the
  patch map (B, 768, H/14, W/14) (``return_token``);
- ``RefSALAD``: ``token_features`` (Linear, ReLU, Linear), ``cluster_features`` and ``score``
  (1x1 Conv, Dropout, ReLU, 1x1 Conv), ``dust_bin``; SuperGlue's log-domain optimal transport
  (``ref_log_optimal_transport``, 3 Sinkhorn iterations, a dustbin row); the aggregation as
  upstream writes it (both tensors repeated to (B, l, m, n), multiplied, summed over the
  patches), per-cluster L2 norm, the L2-normalised token first, a final L2 norm;
- ``build_reference_salad(seed)``: seeded random weights (``reference.dinov2.randomize_``),
  the score head scaled up (``sharpen_scores_``) so that the Sinkhorn iteration count matters.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from reference.dinov2 import RefDinoVisionTransformer, randomize_


class RefDINOv2(nn.Module):
    def __init__(self, num_trainable_blocks: int = 4, norm_layer: bool = True, return_token: bool = True):
        super().__init__()
        self.model = RefDinoVisionTransformer()
        self.num_channels = 768
        self.num_trainable_blocks = num_trainable_blocks
        self.norm_layer = norm_layer
        self.return_token = return_token

    def forward(self, x: torch.Tensor):
        b, _, h, w = x.shape
        x = self.model.prepare_tokens_with_masks(x)
        with torch.no_grad():
            for blk in self.model.blocks[: -self.num_trainable_blocks]:
                x = blk(x)
        x = x.detach()
        for blk in self.model.blocks[-self.num_trainable_blocks :]:
            x = blk(x)
        if self.norm_layer:
            x = self.model.norm(x)
        t, f = x[:, 0], x[:, 1:]
        f = f.reshape(b, h // 14, w // 14, self.num_channels).permute(0, 3, 1, 2)
        return (f, t) if self.return_token else f


def ref_log_sinkhorn_iterations(z, log_mu, log_nu, iters: int):
    u, v = torch.zeros_like(log_mu), torch.zeros_like(log_nu)
    for _ in range(iters):
        u = log_mu - torch.logsumexp(z + v.unsqueeze(1), dim=2)
        v = log_nu - torch.logsumexp(z + u.unsqueeze(2), dim=1)
    return z + u.unsqueeze(2) + v.unsqueeze(1)


def ref_log_optimal_transport(scores, alpha, iters: int):
    """SuperGlue's differentiable optimal transport with a dustbin row only (as SALAD)."""
    b, m, n = scores.shape
    one = scores.new_tensor(1)
    ms, ns, bs = (m * one).to(scores), (n * one).to(scores), ((n - m) * one).to(scores)
    couplings = torch.cat([scores, alpha.expand(b, 1, n)], 1)
    norm = -(ms + ns).log()
    log_mu = torch.cat([norm.expand(m), bs.log()[None] + norm])
    log_nu = norm.expand(n)
    log_mu, log_nu = log_mu[None].expand(b, -1), log_nu[None].expand(b, -1)
    z = ref_log_sinkhorn_iterations(couplings, log_mu, log_nu, iters)
    return z - norm


class RefSALAD(nn.Module):
    def __init__(
        self,
        num_channels: int = 768,
        num_clusters: int = 64,
        cluster_dim: int = 128,
        token_dim: int = 256,
        dropout: float = 0.3,
    ):
        super().__init__()
        self.num_clusters, self.cluster_dim, self.token_dim = num_clusters, cluster_dim, token_dim
        drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.token_features = nn.Sequential(
            nn.Linear(num_channels, 512), nn.ReLU(), nn.Linear(512, token_dim)
        )
        self.cluster_features = nn.Sequential(
            nn.Conv2d(num_channels, 512, 1), drop, nn.ReLU(), nn.Conv2d(512, cluster_dim, 1)
        )
        self.score = nn.Sequential(
            nn.Conv2d(num_channels, 512, 1), drop, nn.ReLU(), nn.Conv2d(512, num_clusters, 1)
        )
        self.dust_bin = nn.Parameter(torch.tensor(1.0))

    def forward(self, x):
        x, t = x
        f = self.cluster_features(x).flatten(2)
        p = self.score(x).flatten(2)
        t = self.token_features(t)
        p = ref_log_optimal_transport(p, self.dust_bin, 3)
        p = torch.exp(p)[:, :-1, :]
        p = p.unsqueeze(1).repeat(1, self.cluster_dim, 1, 1)
        f = f.unsqueeze(2).repeat(1, 1, self.num_clusters, 1)
        f = torch.cat(
            [F.normalize(t, p=2, dim=-1), F.normalize((f * p).sum(dim=-1), p=2, dim=1).flatten(1)], dim=-1
        )
        return F.normalize(f, p=2, dim=-1)


class RefVPRModel(nn.Module):
    """``backbone`` + ``aggregator``, the keys of the released file."""

    def __init__(self):
        super().__init__()
        self.backbone = RefDINOv2(num_trainable_blocks=4, norm_layer=True, return_token=True)
        self.aggregator = RefSALAD(num_channels=768, num_clusters=64, cluster_dim=128, token_dim=256)

    def forward(self, x):
        return self.aggregator(self.backbone(x))


def sharpen_scores_(salad: nn.Module, factor: float = 10.0) -> nn.Module:
    """Scale the score head's last convolution by ``factor``: scores of standard deviation
    about 7 instead of 0.7, sharp assignments as trained ones are, so that Sinkhorn has not
    converged after its 3 iterations and their number shows in the descriptors."""
    with torch.no_grad():
        salad.score[3].weight.mul_(factor)
        salad.score[3].bias.mul_(factor)
    return salad


def build_reference_salad(seed: int = 0) -> RefVPRModel:
    """The released DINOv2 SALAD architecture with seeded random weights (sharp scores), in
    eval mode."""
    model = randomize_(RefVPRModel(), seed)
    sharpen_scores_(model.aggregator)
    return model.eval()  # type: ignore[return-value]
