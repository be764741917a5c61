"""The oracle for MegaLoc: upstream's ``MegaLocModel`` (``gmberton/MegaLoc``) at inference, in plain torch.

It imports nothing from vprkit (torch, torchvision and ``reference.dinov2``/``reference.salad``
only), so the tests that compare ``vprkit.models.zoo.megaloc`` with it compare two separate
implementations. Written from the architecture of ``megaloc_model.py`` and ``hubconf.py``, with
the same module structure, so that ``RefMegaLocModel().state_dict()`` has the keys and shapes
of the released ``megaloc.torch``:

- ``backbone``: ``reference.salad.RefDINOv2`` (4 trainable blocks, final norm, token returned);
- ``aggregator`` (``RefAggregator``): ``agg`` (``RefMegaLocSALAD``: 64 clusters of 256, token
  256, hidden ``mlp_dim`` 512) and ``linear`` (16640 -> 8448); the Sinkhorn step written the
  OpenGlue way, as MegaLoc's file has it (``ref_get_matching_probs``: an augmented score matrix,
  ``ref_log_otp_solver`` with ``reg=1``, 3 iterations), not SALAD's SuperGlue form;
- ``l2norm`` over dim 1;
- its forward's resize of sides that are not multiples of 14 to the nearest ones, with
  torchvision's ``resize`` (antialiased);
- ``build_reference_megaloc(seed)``: seeded random weights, sharp scores
  (``reference.salad.sharpen_scores_``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from torch import nn

from reference.dinov2 import randomize_
from reference.salad import RefDINOv2, sharpen_scores_


def ref_log_otp_solver(log_a, log_b, m_cost, num_iters: int = 20, reg: float = 1.0):
    m_cost = m_cost / reg
    u, v = torch.zeros_like(log_a), torch.zeros_like(log_b)
    for _ in range(num_iters):
        u = log_a - torch.logsumexp(m_cost + v.unsqueeze(1), dim=2).squeeze()
        v = log_b - torch.logsumexp(m_cost + u.unsqueeze(2), dim=1).squeeze()
    return m_cost + u.unsqueeze(2) + v.unsqueeze(1)


def ref_get_matching_probs(s, dustbin_score=1.0, num_iters: int = 3, reg: float = 1.0):
    batch, m, n = s.size()
    s_aug = torch.empty(batch, m + 1, n, dtype=s.dtype, device=s.device)
    s_aug[:, :m, :n] = s
    s_aug[:, m, :] = dustbin_score
    norm = -torch.tensor(math.log(n + m), device=s.device)
    log_a, log_b = norm.expand(m + 1).contiguous(), norm.expand(n).contiguous()
    log_a[-1] = log_a[-1] + math.log(n - m)
    log_a, log_b = log_a.expand(batch, -1), log_b.expand(batch, -1)
    return ref_log_otp_solver(log_a, log_b, s_aug, num_iters=num_iters, reg=reg) - norm


class RefMegaLocSALAD(nn.Module):
    def __init__(
        self,
        num_channels: int = 768,
        num_clusters: int = 64,
        cluster_dim: int = 256,
        token_dim: int = 256,
        mlp_dim: int = 512,
        dropout: float = 0.3,
    ):
        super().__init__()
        self.num_clusters, self.cluster_dim = num_clusters, cluster_dim
        drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.token_features = nn.Sequential(
            nn.Linear(num_channels, mlp_dim), nn.ReLU(), nn.Linear(mlp_dim, token_dim)
        )
        self.cluster_features = nn.Sequential(
            nn.Conv2d(num_channels, mlp_dim, 1), drop, nn.ReLU(), nn.Conv2d(mlp_dim, cluster_dim, 1)
        )
        self.score = nn.Sequential(
            nn.Conv2d(num_channels, mlp_dim, 1), drop, nn.ReLU(), nn.Conv2d(mlp_dim, num_clusters, 1)
        )
        self.dust_bin = nn.Parameter(torch.tensor(1.0))

    def forward(self, x):
        x, t = x
        f = self.cluster_features(x).flatten(2)
        p = self.score(x).flatten(2)
        t = self.token_features(t)
        p = torch.exp(ref_get_matching_probs(p, self.dust_bin, 3))[:, :-1, :]
        p = p.unsqueeze(1).repeat(1, self.cluster_dim, 1, 1)
        f = f.unsqueeze(2).repeat(1, 1, self.num_clusters, 1)
        f = torch.cat(
            [F.normalize(t, p=2, dim=-1), F.normalize((f * p).sum(dim=-1), p=2, dim=1).flatten(1)], dim=-1
        )
        return F.normalize(f, p=2, dim=-1)


class RefAggregator(nn.Module):
    def __init__(self, feat_dim: int, salad_out_dim: int):
        super().__init__()
        self.agg = RefMegaLocSALAD()
        self.linear = nn.Linear(salad_out_dim, feat_dim)

    def forward(self, x):
        return self.linear(self.agg(x))


class RefL2Norm(nn.Module):
    def forward(self, x):
        return F.normalize(x, p=2.0, dim=1)


class RefMegaLocModel(nn.Module):
    def __init__(self, feat_dim: int = 8448):
        super().__init__()
        self.backbone = RefDINOv2(num_trainable_blocks=4, norm_layer=True, return_token=True)
        self.aggregator = RefAggregator(feat_dim, 64 * 256 + 256)
        self.l2norm = RefL2Norm()

    def forward(self, images):
        _, _, h, w = images.shape
        if h % 14 != 0 or w % 14 != 0:
            h, w = round(h / 14) * 14, round(w / 14) * 14
            images = TF.resize(images, [h, w], antialias=True)
        return self.l2norm(self.aggregator(self.backbone(images)))


def build_reference_megaloc(seed: int = 0) -> RefMegaLocModel:
    """The released MegaLoc architecture with seeded random weights (sharp scores), in eval
    mode."""
    model = randomize_(RefMegaLocModel(), seed)
    sharpen_scores_(model.aggregator.agg)
    return model.eval()  # type: ignore[return-value]
