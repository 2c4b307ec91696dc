"""Camera corruptions for the robustness benchmark: the ImageNet-C set in its any-size implementation
(`imagecorruptions`, Michaelis et al. 2019, the Cityscapes-C / COCO-C benchmark; the numpy-2 fork
`imagecorruptions-imaug`), plus two that this product meets and ImageNet-C lacks: a JPEG round trip at the
qualities of ROS compressed transports, and low light (a darkened exposure with its sensor noise).

Every corruption is a function (RGB uint8 H x W x 3, severity 1-5, seed) -> RGB uint8 of the same size,
deterministic for a given seed. Labels never move (as in Cityscapes-C, also for elastic_transform).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import cv2
import numpy as np

SEVERITIES = (1, 2, 3, 4, 5)

#: ImageNet-C corruptions the benchmark runs, by family (glass and zoom blur are left out: 2.4 s and 0.2 s a
#: frame at 480x360 would dominate the benchmark, and motion/defocus/gaussian blur cover the family)
IMAGENET_C = {
    "noise": ("gaussian_noise", "shot_noise", "impulse_noise"),
    "blur": ("defocus_blur", "motion_blur", "gaussian_blur"),
    "weather": ("snow", "frost", "fog", "spatter"),
    "digital": ("brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression"),
}
#: JPEG quality per severity: 95 is compressed_image_transport's default, users lower it for bandwidth
ROS_JPEG_QUALITY = (95, 80, 60, 40, 20)
#: low light: exposure factor, shot-noise gain (grey levels per photo-electron) and read noise, per severity
LOW_LIGHT = ((0.6, 0.5, 2.0), (0.45, 0.75, 3.0), (0.3, 1.0, 4.0), (0.2, 1.5, 6.0), (0.12, 2.0, 8.0))


def imagenet_c(name: str) -> Callable[[np.ndarray, int, int], np.ndarray]:
    def corrupt_with(image: np.ndarray, severity: int, seed: int) -> np.ndarray:
        from imagecorruptions import corrupt, corruption_dict  # numba/skimage load on first use, not at import
        np.random.seed(seed % 2**32)  # imagecorruptions draws from numpy's global generator, ...
        # ... except impulse noise (skimage's random_noise, a fresh generator per call unless given a seed)
        seeded = {"seed": seed} if "seed" in inspect.signature(corruption_dict[name]).parameters else {}
        return np.ascontiguousarray(corrupt(image, severity=severity, corruption_name=name, **seeded),
                                    dtype=np.uint8)
    corrupt_with.__name__ = name
    return corrupt_with


def jpeg_ros(image: np.ndarray, severity: int, seed: int) -> np.ndarray:
    """Encode and decode as a ROS `compressed` transport would (OpenCV's JPEG, BGR on the wire)."""
    quality = ROS_JPEG_QUALITY[severity - 1]
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("OpenCV could not encode a JPEG")
    return cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def low_light(image: np.ndarray, severity: int, seed: int) -> np.ndarray:
    """Fewer photons: the frame scaled down, then Poisson shot noise at a gain and Gaussian read noise."""
    exposure, gain, read_noise = LOW_LIGHT[severity - 1]
    rng = np.random.default_rng(seed)
    signal = image.astype(np.float32) * exposure
    electrons = rng.poisson(signal / gain).astype(np.float32)
    noisy = electrons * gain + rng.normal(0.0, read_noise, image.shape).astype(np.float32)
    return np.clip(noisy, 0, 255).astype(np.uint8)


CORRUPTIONS: dict[str, Callable[[np.ndarray, int, int], np.ndarray]] = {
    **{name: imagenet_c(name) for names in IMAGENET_C.values() for name in names},
    "jpeg_ros": jpeg_ros,
    "low_light": low_light,
}
FAMILY = {**{name: family for family, names in IMAGENET_C.items() for name in names},
          "jpeg_ros": "digital", "low_light": "noise"}


def corrupt(image: np.ndarray, name: str, severity: int, seed: int = 0) -> np.ndarray:
    """One corruption of one RGB uint8 frame; an unknown name or severity is an error naming the choices."""
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; known: {sorted(CORRUPTIONS)}")
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be one of {SEVERITIES}, got {severity!r}")
    return CORRUPTIONS[name](np.ascontiguousarray(image), severity, seed)
