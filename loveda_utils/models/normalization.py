"""How each set of pretrained weights normalises LoveDA's 8-bit tiles: the one place.

LoveDA tiles are 8-bit RGB (0..255). ``SegmentationModel`` computes ``(x - mean) / std`` on
the device with ``mean``/``std`` in 0..255 units, chosen per weights so that LoveDA reaches
the input distribution the weights were pre-trained on. torchgeo's ``weights.transforms``
were read for each entry; the choice is keyed by the weights' ``meta["dataset"]``
(:data:`EO_NORMALIZATION`):

* ``"none"``, ``"imagenet"`` and a backbone file given by path: ImageNet statistics,
  ``mean = 255 * (0.485, 0.456, 0.406)``, ``std = 255 * (0.229, 0.224, 0.225)``.
  torchvision's and smp's ImageNet weights were trained on 8-bit RGB / 255 normalised with
  these; for random initialisation any zero-centred, unit-scale input is right and this
  keeps every "none" row comparable.
* SSL4EO-S12 MoCo RGB (``ResNet18/50_Weights.SENTINEL2_RGB_MOCO``): ``mean = 0``,
  ``std = 255``. torchgeo's transform divides by 10000, the scaling for raw 16-bit
  Sentinel-2 L1C values. The RGB weights, however, were pre-trained on SSL4EO-S12's 8-bit
  RGB release (``convert_rgb.py`` stretches each band's mean +- 2 std to 0..255) read as
  uint8 and scaled to [0, 1] by ``ToTensor``. LoveDA is 8-bit display RGB already, so / 255
  reproduces that range, whereas / 10000 would feed values about 40 times smaller than
  anything the network saw.
* SeCo (``SENTINEL2_RGB_SECO``): ImageNet statistics. torchgeo's transform stretches raw
  Sentinel-2 RGB between per-band quantiles to 0..255 (SeCo's 8-bit conversion), then
  divides by 255 and applies ImageNet mean/std; LoveDA is already 8-bit RGB, so only the
  last two steps apply.
* fMoW GASSL (``FMOW_RGB_GASSL``): ImageNet statistics; torchgeo's transform is / 255 then
  ImageNet mean/std on 8-bit fMoW RGB, exactly what LoveDA needs.
* SatlasPretrain RGB (ResNet and Swin V2 ``SENTINEL2_SI_RGB_SATLAS``,
  ``SENTINEL2_MI_RGB_SATLAS``, Swin-V2-B ``NAIP_RGB_SI_SATLAS``, ``NAIP_RGB_MI_SATLAS``):
  ``mean = 0``, ``std = 255``. torchgeo's transform is ``Normalize(0, 255)`` (after a 256 px
  centre crop we do not apply); the Satlas RGB models take 8-bit Sentinel-2 TCI or 8-bit
  aerial (NAIP, about 1 m) RGB / 255, and LoveDA is 8-bit RGB. Input size (Swin V2): patch 4
  and 8x8 windows with continuous position bias, so nothing is tied to the 256 px crop; sides
  that are multiples of 32 run as they are (512 and 1024 px), others are padded.
* Scale-MAE (``ScaleMAELarge16_Weights.FMOW_RGB``, dataset ``fMoW``): ImageNet statistics;
  torchgeo's transform is / 255 then ImageNet mean/std on 8-bit fMoW RGB (224 px images,
  meta ``img_size`` 224). Input size: patch 16; the file's 14x14 ``pos_embed`` is not used,
  Scale-MAE's GSD sine-cosine positions are computed for the actual grid (32x32 tokens at
  512 px, 64x64 at 1024 px).
* DOFA (``DOFABase16_Weights.DOFA_MAE``): ImageNet statistics, with LoveDA's R, G, B given
  to DOFA as the wavelengths
  :data:`~loveda_utils.models.foundation.DOFA_RGB_WAVELENGTHS_UM` (0.665, 0.56, 0.49 um,
  Sentinel-2 B04/B03/B02). torchgeo leaves the normalisation out ("sensor-dependent": its
  transform is only a 224 px centre crop, and its meta lists neither bands nor channels, as
  DOFA takes any bands with their wavelengths); DOFA's own README normalises 8-bit RGB
  (NAIP) with ImageNet mean/std on 0..255 and gives it these wavelengths. The record's
  normalisation text names the wavelengths. Input size: patch 16; the 14x14 (224 px)
  position embedding is resized bicubically to the grid (32x32 at 512 px, 64x64 at 1024 px).
* Every ``torchgeo``-family network pads its input to a multiple of 32 (its pyramid's 1/32
  level) and crops the logits back; details in :mod:`loveda_utils.models.foundation`
  ("Input sizes").
* OAM-TCD (``Unet_Weights.OAM_RGB_RESNET50_TCD``, a whole smp UNet R-50 for tree cover):
  ``mean = 0``, ``std = 1``, the 8-bit values as they are. torchgeo's transform only resizes
  ("no normalization"), and the OAM-TCD pipeline's dataset hands the UNet its 8-bit RGB as
  float 0..255 (``image.float()`` after albumentations' ``ToTensorV2``, nothing else). Input
  size: trained on 1024 px tiles at 10 cm; the UNet takes any multiple of 32 (others padded).
* A backbone file given by path for a ``torchgeo`` entry is in the layout of the entry's
  own weights, so it gets their normalisation (and says so).
* A full ``SegmentationModel`` state dict given by path brings its own ``mean`` and ``std``
  buffers, so a trained model is evaluated with the normalisation it was trained with (files
  without them get the entry's default normalisation, and say so).

"""

from __future__ import annotations

from typing import NamedTuple

from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD
from .foundation import DOFA_RGB_WAVELENGTHS_UM

__all__ = ["EO_NORMALIZATION", "IMAGENET_NORMALIZATION", "Normalization"]


class Normalization(NamedTuple):
    """``mean``/``std`` in 0..255 units and the short text the results record shows."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    text: str


# The 0..1 statistics live in data/transforms.py (one place); models work in 0..255 units.
IMAGENET_NORMALIZATION = Normalization(
    tuple(255 * m for m in IMAGENET_MEAN),  # type: ignore[arg-type]
    tuple(255 * s for s in IMAGENET_STD),  # type: ignore[arg-type]
    "ImageNet mean/std on 0..255",
)
_DIV255 = (0.0, 0.0, 0.0), (255.0, 255.0, 255.0)

#: LoveDA normalisation per torchgeo ``weights.meta["dataset"]`` (reasons: the module docstring).
EO_NORMALIZATION: dict[str, Normalization] = {
    "SSL4EO-S12": Normalization(
        *_DIV255,
        "x/255: pre-trained on SSL4EO-S12's 8-bit RGB scaled to [0, 1] "
        "(torchgeo's /10000 is for raw 16-bit Sentinel-2)",
    ),
    "SeCo Dataset": Normalization(
        IMAGENET_NORMALIZATION.mean,
        IMAGENET_NORMALIZATION.std,
        "ImageNet mean/std on 0..255: SeCo stretches Sentinel-2 RGB to 8 bits, then "
        "/255 and ImageNet mean/std",
    ),
    "fMoW Dataset": Normalization(
        IMAGENET_NORMALIZATION.mean,
        IMAGENET_NORMALIZATION.std,
        "ImageNet mean/std on 0..255 (GASSL: /255, ImageNet)",
    ),
    "SatlasPretrain": Normalization(
        *_DIV255, "x/255: Satlas RGB models take 8-bit Sentinel-2 TCI or aerial RGB / 255"
    ),
    "fMoW": Normalization(
        IMAGENET_NORMALIZATION.mean,
        IMAGENET_NORMALIZATION.std,
        "ImageNet mean/std on 0..255 (Scale-MAE: /255, ImageNet)",
    ),
    "OAM-TCD": Normalization(
        (0.0, 0.0, 0.0),
        (1.0, 1.0, 1.0),
        "0..255 as they are: the OAM-TCD UNet was trained on unnormalised 8-bit RGB",
    ),
    "SatlasPretrain, Five-Billion-Pixels, HySpecNet-11k": Normalization(
        IMAGENET_NORMALIZATION.mean,
        IMAGENET_NORMALIZATION.std,
        "ImageNet mean/std on 0..255 (DOFA's RGB normalisation); DOFA wavelengths "
        f"R, G, B = {', '.join(f'{w:g}' for w in DOFA_RGB_WAVELENGTHS_UM)} um",
    ),
}
