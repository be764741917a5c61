"""EigenPlaces (Berton et al., ICCV 2023): CosPlace's architecture (``cosplace.GeoLocalizationNet``:
a torchvision CNN, then L2 -> GeM -> FC -> L2, the same state dict keys) trained for viewpoint
robustness. Every network released on upstream's torch.hub (``gmberton/eigenplaces``,
``get_trained_model``) is registered as ``eigenplaces_<backbone>_<dim>``.
"""

from __future__ import annotations

from vprkit.models.zoo.cosplace import register_family

# EigenPlaces' hubconf.py AVAILABLE_TRAINED_MODELS (its README lists ResNet-50 and ResNet-101
# without 1024, the hub with it; no ResNet-152 is released although the code builds one)
EIGENPLACES_RELEASES: dict[str, tuple[int, ...]] = {
    "VGG16": (512,),
    "ResNet18": (256, 512),
    "ResNet50": (128, 256, 512, 1024, 2048),
    "ResNet101": (128, 256, 512, 1024, 2048),
}

register_family(
    "eigenplaces",
    "EigenPlaces",
    EIGENPLACES_RELEASES,
    weights=(
        "https://github.com/gmberton/EigenPlaces/releases/download/v1.0/"
        "{backbone}_{dim}_eigenplaces.pth (torch.hub gmberton/eigenplaces "
        "get_trained_model(backbone='{backbone}', fc_output_dim={dim}))"
    ),
    notes=(
        "Upstream evaluates each image at its own size (eval.py: TestDataset with ToTensor and "
        "ImageNet Normalize only, no resize option), queries one at a time. The same layout "
        "as CosPlace: a file of either family loads into the other's model of the same "
        "backbone and dim."
    ),
    more_notes={
        (backbone, 1024): (
            "Listed by upstream's hubconf.py but not by its README "
            "(which names 128, 256, 512 and 2048 for this backbone)."
        )
        for backbone in ("ResNet50", "ResNet101")
    },
)
