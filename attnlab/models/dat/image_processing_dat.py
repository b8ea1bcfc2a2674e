"""Images (PIL, numpy, torch; one or a list) → the ``pixel_values`` a ``DATForImageClassification`` takes."""

from __future__ import annotations

from transformers.image_processing_backends import PilBackend
from transformers.image_utils import IMAGENET_STANDARD_MEAN, IMAGENET_STANDARD_STD, PILImageResampling

from .configuration_dat_vision import DATVisionConfig


class DATImageProcessor(PilBackend):
    """Resize to the model's image size (bilinear), scale to [0, 1], normalise with mean = std = 0.5 per channel:
    float (batch, channels, height, width) ``pixel_values``. ``for_config`` sizes it for a model."""

    resample = PILImageResampling.BILINEAR
    image_mean = IMAGENET_STANDARD_MEAN
    image_std = IMAGENET_STANDARD_STD
    size = {"height": 224, "width": 224}
    do_resize = True
    do_rescale = True
    do_normalize = True

    @classmethod
    def for_config(cls, config: DATVisionConfig, **kwargs) -> DATImageProcessor:
        """The processor of a model of this config: its image size, its channel count."""
        height, width = config.image_sides
        channels = config.num_channels
        kwargs.setdefault("size", {"height": height, "width": width})
        kwargs.setdefault("image_mean", [0.5] * channels)
        kwargs.setdefault("image_std", [0.5] * channels)
        kwargs.setdefault("do_convert_rgb", channels == 3)
        return cls(**kwargs)
