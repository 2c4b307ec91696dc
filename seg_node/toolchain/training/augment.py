"""Training augmentation on (RGB uint8, label uint8) pairs: random scale, crop and flip move pixels and labels
together; photometric jitter and the camera corruptions (albumentations) move neither.

The corruption recipe is a small dataclass so that its probabilities and strengths can be given on the
command line, kept in the checkpoint and recorded in the model card. Some benchmark corruptions are kept out
of every recipe on purpose (`HELD_OUT`), and snow and frost out of any recipe whose group imitating them is off, so
the robustness benchmark can say, model by model (`unseen_in_training`), how far robustness generalises.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields

import cv2
import numpy as np

from ...core.errors import UserError
from ..data import IGNORE_INDEX

#: benchmark corruptions that no training transform imitates, whatever the recipe (one weather type among them)
HELD_OUT = ("impulse_noise", "pixelate", "elastic_transform", "spatter")
#: benchmark corruptions that only one optional group of the recipe imitates: unseen where it is off
IMITATED_BY_GROUP = {"snow": ("snow",), "ice": ("frost",)}


class CorruptionRecipeError(UserError, ValueError):
    """A corruption recipe with an unknown key or a value out of range."""


@dataclass(frozen=True)
class CorruptionRecipe:
    """Each group is applied with its probability, one transform of the group drawn at random, in the order
    a camera produces them: scene (weather, light), optics (blur), sensor (noise), encoder (compression)."""

    weather: float = 0.15      # fog, rain, shadow, sun flare
    photometric: float = 0.5   # brightness/contrast, gamma, hue/saturation, darkening (low light)
    blur: float = 0.3          # gaussian, motion, defocus
    noise: float = 0.4         # gaussian, shot (Poisson), ISO (colour + luminance)
    compression: float = 0.3   # JPEG, downscale-upscale (bilinear)
    snow: float = 0.0          # snow flakes bleached into the frame, or a snow texture over it
    uneven_light: float = 0.0  # light that varies across the frame: plasma brightness/contrast/shadow, gradients
    reflection: float = 0.0    # a reflection on the windscreen laid over the scene
    ice: float = 0.0           # ice crystals on the windscreen over a dimmed scene
    strength: float = 1.0      # scales every transform's upper range (1: as below)

    def validate(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "strength":
                if not 0.0 < value <= 2.0:
                    raise CorruptionRecipeError(f"corruption strength must be in (0, 2], got {value}")
            elif not 0.0 <= value <= 1.0:
                raise CorruptionRecipeError(f"corruption probability {f.name} must be in [0, 1], got {value}")

    def to_dict(self) -> dict:
        return asdict(self)

    def unseen(self) -> tuple[str, ...]:
        """The benchmark corruptions that no transform of this recipe imitates."""
        return HELD_OUT + tuple(name for group, names in IMITATED_BY_GROUP.items() if not getattr(self, group)
                                for name in names)

    @classmethod
    def parse(cls, text: str | dict) -> CorruptionRecipe:
        """From JSON (or a dict); unknown keys are an error, missing ones keep their defaults."""
        try:
            data = json.loads(text) if isinstance(text, str) else dict(text)
        except json.JSONDecodeError as exc:
            raise CorruptionRecipeError(f"a corruption recipe is 'default' or JSON, got {text!r}: {exc}") from None
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise CorruptionRecipeError(f"unknown corruption recipe key(s) {unknown}; "
                                        f"known: {[f.name for f in fields(cls)]}")
        recipe = cls(**data)
        recipe.validate()
        return recipe


def parse_corruption(text: str) -> CorruptionRecipe | None:
    """The command-line form: '' (off), 'default', or JSON overriding the defaults."""
    text = text.strip()
    if not text:
        return None
    return CorruptionRecipe() if text == "default" else CorruptionRecipe.parse(text)


def unseen_in_training(*records: dict | None) -> tuple[str, ...]:
    """The benchmark corruptions that none of the recipes in a model card's training and compression records
    (every "corruption" entry, its endpoints and the runs it started from included) imitates. A model trained
    without any recipe is held to the default recipe's set, so that its row compares with the robust models'."""
    found: list[CorruptionRecipe] = []

    def walk(value) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                if key == "corruption" and isinstance(item, dict):
                    found.append(CorruptionRecipe.parse(item))
                else:
                    walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(list(records))
    recipes = found or [CorruptionRecipe()]
    return tuple(name for name in recipes[0].unseen() if all(name in r.unseen() for r in recipes))


def corruption_transform(recipe: CorruptionRecipe, seed: int):
    """The albumentations pipeline of a recipe (photometric only: labels never change)."""
    import albumentations as A  # the offline toolchain's dependency, loaded when training asks for it

    s = recipe.strength
    transform = A.Compose([
        A.OneOf([
            A.RandomFog(fog_coef_range=(0.1, min(1.0, 0.5 * s)), alpha_coef=0.1),
            A.RandomRain(brightness_coefficient=0.8, drop_width=1, blur_value=3),
            A.RandomShadow(shadow_roi=(0, 0.3, 1, 1)),
            A.RandomSunFlare(flare_roi=(0, 0, 1, 0.5), src_radius=120),
        ], p=recipe.weather),
        A.OneOf([
            A.RandomSnow(snow_point_range=(0.1, min(0.9, 0.4 * s)), brightness_coeff=2.5, method="bleach"),
            A.RandomSnow(snow_point_range=(0.1, min(0.9, 0.4 * s)), brightness_coeff=2.5, method="texture"),
        ], p=recipe.snow),
        A.OneOf([
            A.PlasmaBrightnessContrast(brightness_range=(-0.3 * s, 0.3 * s), contrast_range=(-0.3 * s, 0.3 * s)),
            A.PlasmaShadow(shadow_intensity_range=(0.2, min(0.9, 0.6 * s))),
            A.Illumination(mode="gaussian", intensity_range=(0.05, min(0.2, 0.2 * s))),
            A.Illumination(mode="linear", intensity_range=(0.05, min(0.2, 0.2 * s))),
        ], p=recipe.uneven_light),
        windscreen_reflection(A, weight_range=(0.1, min(0.8, 0.4 * s)), sigma_range=(0.0, 2.0), p=recipe.reflection),
        windscreen_ice(A, weight_range=(0.2, min(0.8, 0.6 * s)), dimming_range=(0.6, 1.0), p=recipe.ice),
        A.OneOf([
            A.RandomBrightnessContrast(brightness_limit=0.4 * s, contrast_limit=0.4 * s),
            A.RandomGamma(gamma_limit=(round(100 / (1 + 0.5 * s)), round(100 * (1 + 0.5 * s)))),
            A.HueSaturationValue(hue_shift_limit=round(10 * s), sat_shift_limit=round(30 * s),
                                 val_shift_limit=round(20 * s)),
            A.RandomBrightnessContrast(brightness_limit=(-min(0.8, 0.5 * s), -0.2),
                                       contrast_limit=(-min(0.8, 0.4 * s), -0.1)),  # dusk, night
        ], p=recipe.photometric),
        A.OneOf([
            A.GaussianBlur(blur_limit=(3, 2 * round(4 * s) + 1), sigma_limit=(0.5, 3.0 * s)),
            # centred kernels: a shifted one would move the frame against its labels
            A.MotionBlur(blur_limit=(3, 2 * round(7 * s) + 1), allow_shifted=False, direction_range=(0.0, 0.0)),
            A.Defocus(radius=(1, max(2, round(6 * s))), alias_blur=(0.1, 0.5)),
        ], p=recipe.blur),
        A.OneOf([
            A.GaussNoise(std_range=(0.02, min(0.5, 0.25 * s))),
            A.ShotNoise(scale_range=(0.02, min(1.0, 0.5 * s))),
            A.ISONoise(color_shift=(0.01, 0.05), intensity=(0.1, min(1.5, 0.8 * s))),
        ], p=recipe.noise),
        A.OneOf([
            A.ImageCompression(quality_range=(max(1, round(60 - 50 * s)), 90)),
            A.Downscale(scale_range=(max(0.1, 1 - 0.6 * s), 0.8),
                        interpolation_pair={"downscale": cv2.INTER_AREA, "upscale": cv2.INTER_LINEAR}),
        ], p=recipe.compression),
    ], seed=seed)
    return transform


def windscreen_reflection(albumentations, weight_range: tuple[float, float], sigma_range: tuple[float, float],
                          p: float):
    """A reflection on the windscreen, I = T + w R (as reflection-removal work synthesises them): R is the frame's
    own mirror image, shifted and defocused, so it needs no second image; albumentations has no such transform."""

    class WindscreenReflection(albumentations.ImageOnlyTransform):
        def get_params(self):
            return {"weight": self.py_random.uniform(*weight_range), "sigma": self.py_random.uniform(*sigma_range),
                    "shift": self.py_random.random()}

        def apply(self, img, weight, sigma, shift, **params):
            reflected = np.roll(img[::-1], round(shift * img.shape[1]), axis=1)
            if sigma > 0.3:
                reflected = cv2.GaussianBlur(reflected, (0, 0), sigma)
            return np.clip(img.astype(np.float32) + weight * reflected, 0, 255).astype(np.uint8)

    return WindscreenReflection(p=p)


def windscreen_ice(albumentations, weight_range: tuple[float, float], dimming_range: tuple[float, float], p: float):
    """Ice on the windscreen, I = a T + w F (the form of ImageNet-C's frost): F is a bright, bluish texture of
    crystal streaks drawn from noise, never from the benchmark's frost photographs, so frost still tests how far
    this generalises; albumentations has no such transform."""
    from albumentations.augmentations.pixel.functional import generate_plasma_pattern

    def ice_texture(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
        """Three patches of crystals (noise smeared along a random direction, its ridges kept, at one of three
        scales), each where a plasma fractal is high, over a patchy bright film."""
        crystals, cover = np.zeros(shape, np.float32), np.full(shape, 1e-6, np.float32)
        for _ in range(3):
            length, scale = int(rng.integers(9, 31)), int(rng.integers(1, 4))
            kernel = np.zeros((length, length), np.float32)
            kernel[length // 2] = 1.0 / length
            turn = cv2.getRotationMatrix2D(((length - 1) / 2, (length - 1) / 2), rng.uniform(0, 180), 1.0)
            noise = rng.random((-(-shape[0] // scale), -(-shape[1] // scale)), dtype=np.float32)
            smeared = cv2.filter2D(noise, -1, cv2.warpAffine(kernel, turn, kernel.shape))
            smeared = cv2.resize(cv2.normalize(smeared, None, 0, 1, cv2.NORM_MINMAX), shape[::-1])
            where = generate_plasma_pattern(shape, 0.5, rng) ** 3
            crystals += where * np.clip(1 - np.abs(2 * smeared - 1), 0, 1) ** rng.uniform(4, 10)
            cover += where
        crystals = cv2.normalize(crystals / cover, None, 0, 1, cv2.NORM_MINMAX)
        film = rng.uniform(0.3, 0.8) * (0.6 + 0.4 * generate_plasma_pattern(shape, 0.5, rng))
        tint = np.array([rng.uniform(0.75, 0.95), rng.uniform(0.85, 1.0), 1.0], np.float32)
        return 255 * np.clip(film + 0.6 * crystals, 0, 1)[..., None] * tint

    class WindscreenIce(albumentations.ImageOnlyTransform):
        def get_params(self):
            return {"weight": self.py_random.uniform(*weight_range), "dimming": self.py_random.uniform(*dimming_range),
                    "seed": self.py_random.randrange(2**31)}

        def apply(self, img, weight, dimming, seed, **params):
            ice = ice_texture(img.shape[:2], np.random.default_rng(seed))
            return np.clip(dimming * img.astype(np.float32) + weight * ice, 0, 255).astype(np.uint8)

    return WindscreenIce(p=p)


def augment(image: np.ndarray, label: np.ndarray, rng: np.random.Generator, crop: tuple[int, int],
            scale_range: tuple[float, float], corruption=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(clean image, corrupted image, label) of one training crop: the same geometry for all three; the
    corrupted one is the clean one through `corruption` (a `corruption_transform`), or the same array."""
    scale = rng.uniform(*scale_range)
    height, width = label.shape
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    image = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
    label = cv2.resize(label, size, interpolation=cv2.INTER_NEAREST)
    crop_h, crop_w = crop
    pad_h, pad_w = max(crop_h - label.shape[0], 0), max(crop_w - label.shape[1], 0)
    if pad_h or pad_w:
        image = cv2.copyMakeBorder(image, 0, pad_h, 0, pad_w, cv2.BORDER_CONSTANT, value=(127, 127, 127))
        label = cv2.copyMakeBorder(label, 0, pad_h, 0, pad_w, cv2.BORDER_CONSTANT, value=IGNORE_INDEX)
    top = rng.integers(0, label.shape[0] - crop_h + 1)
    left = rng.integers(0, label.shape[1] - crop_w + 1)
    image = image[top:top + crop_h, left:left + crop_w]
    label = label[top:top + crop_h, left:left + crop_w]
    if rng.random() < 0.5:
        image, label = image[:, ::-1], label[:, ::-1]
    clean = np.ascontiguousarray(photometric_jitter(image, rng))
    corrupted = clean if corruption is None else corruption(image=clean)["image"]
    return clean, corrupted, np.ascontiguousarray(label)


def photometric_jitter(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Brightness, contrast and saturation each scaled by a factor in [0.75, 1.25]."""
    out = image.astype(np.float32)
    brightness, contrast, saturation = rng.uniform(0.75, 1.25, size=3)
    out *= brightness
    out = (out - out.mean()) * contrast + out.mean()
    grey = out.mean(axis=2, keepdims=True)
    out = (out - grey) * saturation + grey
    return np.clip(out, 0, 255).astype(np.uint8)
