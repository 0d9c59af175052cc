"""Earth-observation foundation backbones (torchgeo 0.10) under an UPerNet head.

The registry's ``torchgeo`` family: transformer backbones with torchgeo RGB weights, built
by torchgeo's own model builders with ``weights=None`` (so their parameters carry the key
layout of torchgeo's weight files), fed to segmentation-models-pytorch's UPerNet decoder:

* Swin Transformer V2 (``swin_v2_t``, ``swin_v2_b``; SatlasPretrain): hierarchical, its
  four stages (1/4 .. 1/32) feed UPerNet directly, as MMSeg's Swin UPerNet configs do.
  The decoder's per-level LayerNorms play the role of MMSeg Swin's ``norm0..3``; the
  classifier's final ``norm`` and ``head`` in the weight files are not used.
* Plain ViTs with patch 16 (``vit_large_patch16``: Scale-MAE; ``dofa_base_patch16_224``:
  DOFA): four intermediate block outputs (MMSeg's MAE config taps blocks 3, 5, 7, 11 of
  ViT-B; its ViT-L/BEiT-L configs 7, 11, 15, 23), a :class:`~.necks.Feature2Pyramid` neck
  turns the one 1/16 grid into 1/4, 1/8, 1/16, 1/32, then UPerNet.

Input sizes
-----------
:class:`FoundationUPerNet` sets ``requires_divisible_input_shape`` with an input divisor
(``encoder.output_stride``) of 32, so the registry wrapper pads other sizes with zeros
after normalisation and crops the logits back; 64, 512 and 1024 px need no padding.

* Swin V2 (torchvision): patch 4, window 8x8 at every stage, relative positions through
  the continuous (log-spaced) position-bias MLP, so no table depends on the image size.
  torchvision pads each stage's map to a multiple of the window inside the attention; at
  512 px the stages are 128, 64, 32, 16 tokens a side (multiples of 8, no padding), at
  1024 px 256 .. 32; at 64 px the last two stages (4, 2) are padded to one window.
* Scale-MAE ViT-L/16: the position embedding is Scale-MAE's ground-sample-distance
  sine-cosine embedding, computed for the actual token grid at every forward (the weight
  file's fixed 14x14 ``pos_embed`` is not used, as in torchgeo's ``ScaleMAE._pos_embed``),
  so any grid works: 32x32 tokens at 512 px, 64x64 at 1024 px. ``res`` is the GSD ratio
  Scale-MAE scales positions by; 1.0 (torchgeo's default and Scale-MAE's evaluation
  default) is kept.
* DOFA ViT-B/16: the fixed (MAE sine-cosine, ``requires_grad=False``) 14x14 (224 px)
  ``pos_embed`` of the weights is resized bicubically to the token grid at every forward (timm's
  ``resample_abs_pos_embed``, as MMSeg's ViT ``resize_pos_embed``): 32x32 at 512 px,
  64x64 at 1024 px. DOFA's patch embedding is a convolution generated from the bands'
  wavelengths (kernel 16, stride 16, padding 1, so H/16 tokens for H divisible by 16);
  LoveDA's RGB is given as :data:`DOFA_RGB_WAVELENGTHS_UM`.

Layer-wise learning-rate decay
------------------------------
:meth:`FoundationUPerNet.param_groups` returns optimizer parameter groups with
``lr = base_lr * decay ** (num_layers + 1 - layer_id)``, MMSeg's
``LayerDecayOptimizerConstructor`` rule: layer 0 is the patch embedding (and class token,
position embedding), block ``i`` is layer ``i + 1``, neck/decoder/head are
``num_layers + 1`` (scale 1). Swin counts its blocks across stages, a patch-merging layer
going with the last block before it. Biases, norms, tokens and Swin V2's ``logit_scale``
and position-bias MLP get no weight decay.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .necks import Feature2Pyramid

__all__ = [
    "DOFA_RGB_WAVELENGTHS_UM",
    "ENCODERS",
    "DOFAEncoder",
    "FoundationUPerNet",
    "ScaleMAEEncoder",
    "SwinV2Encoder",
    "ViTEncoder",
    "backbone_state_dict",
    "build_foundation_net",
]

#: Centre wavelengths (micrometres) DOFA is given for LoveDA's R, G, B bands: those of
#: Sentinel-2 B04, B03, B02, which DOFA's README uses for its RGB (NAIP) example.
DOFA_RGB_WAVELENGTHS_UM: tuple[float, float, float] = (0.665, 0.56, 0.49)

#: Input sides must be multiples of this: the pyramid's coarsest level is 1/32.
_INPUT_DIVISOR = 32

#: Parameter-name fragments that get no weight decay (besides biases and 1-D tensors).
_NO_WEIGHT_DECAY = (
    "cls_token", "pos_embed", "logit_scale", "cpb_mlp", "weight_tokens", "bias_token",
)  # fmt: skip


def _set_drop_path(blocks: nn.ModuleList, rate: float) -> None:
    """Stochastic depth rising linearly to ``rate`` over timm ``Block``s (timm's rule)."""
    from timm.layers import DropPath

    for i, block in enumerate(blocks):
        block_rate = rate * i / max(len(blocks) - 1, 1)
        path = DropPath(block_rate) if block_rate > 0 else nn.Identity()
        block.drop_path1 = path
        block.drop_path2 = path


# --------------------------------------------------------------------------- encoders


class SwinV2Encoder(nn.Module):
    """torchvision Swin V2 stages as a four-level pyramid ``[B, C_i, H/2^(i+2), W/2^(i+2)]``.

    ``features`` is torchvision's ``SwinTransformer.features``, so the state dict keys are
    those of torchgeo's Satlas Swin V2 files (``features.<i>...``).
    """

    output_stride = _INPUT_DIVISOR
    unused_weights = ("norm", "head")
    #: ``features`` indices of the four stages (the others are patch embed/merging).
    _STAGES = (1, 3, 5, 7)

    def __init__(self, variant: str, drop_path: float) -> None:
        super().__init__()
        import torchgeo.models
        from torchvision.models.swin_transformer import SwinTransformerBlockV2

        builders = {"swin_v2_t": torchgeo.models.swin_v2_t, "swin_v2_b": torchgeo.models.swin_v2_b}
        swin = builders[variant](weights=None)
        self.features = swin.features
        # torchvision fixes the builders' stochastic depth (0.2 T, 0.5 B); reset it to
        # ``drop_path`` with torchvision's own linear rule over all blocks.
        blocks = [m for m in self.features.modules() if isinstance(m, SwinTransformerBlockV2)]
        for i, block in enumerate(blocks):
            block.stochastic_depth.p = drop_path * i / max(len(blocks) - 1, 1)
        embed_dim = int(self.features[0][0].out_channels)
        self.out_channels = tuple(embed_dim * 2**i for i in range(len(self._STAGES)))
        self.depths = tuple(len(self.features[i]) for i in self._STAGES)
        self.num_layers = sum(self.depths)

    def forward(self, x: Tensor) -> list[Tensor]:
        outs = []
        for index, layer in enumerate(self.features):
            x = layer(x)  # torchvision keeps Swin maps channels-last: [B, H, W, C]
            if index in self._STAGES:
                outs.append(x.permute(0, 3, 1, 2).contiguous())
        return outs

    def layer_id(self, name: str) -> int:
        """Layer-decay depth of parameter ``name`` (relative to this module)."""
        parts = name.split(".")
        index = int(parts[1])
        if index == 0:  # patch embedding
            return 0
        stage, is_stage = divmod(index - 1, 2)
        if is_stage == 0:  # features[1 + 2 * stage][block]
            return sum(self.depths[:stage]) + int(parts[2]) + 1
        return sum(self.depths[: stage + 1])  # patch merging after ``stage``


class ViTEncoder(nn.Module):
    """A patch-16 ViT returning the token grids of ``out_indices`` as ``[B, D, H/16, W/16]``.

    It wraps the modules of a torchgeo ViT ``source`` (not copies: its weights load as they
    are): ``patch_embed``, ``cls_token`` and ``blocks``, whose stochastic depth is set to
    ``drop_path``. Subclasses take what else they need from ``source`` and implement
    :meth:`embed`.
    """

    output_stride = _INPUT_DIVISOR
    unused_weights: tuple[str, ...] = ()

    def __init__(self, source: Any, out_indices: Sequence[int], drop_path: float) -> None:
        super().__init__()
        self.embed_dim = int(source.embed_dim)
        self.out_indices = tuple(out_indices)
        self.out_channels = (self.embed_dim,) * len(self.out_indices)
        self.patch_embed = source.patch_embed
        self.cls_token: nn.Parameter = source.cls_token
        self.blocks: nn.ModuleList = source.blocks
        _set_drop_path(self.blocks, drop_path)

    @property
    def num_layers(self) -> int:
        return len(self.blocks)

    def embed(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """``([B, 1 + h * w, D] tokens with class token and positions, (h, w))``."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> list[Tensor]:
        tokens, (h, w) = self.embed(x)
        outs = []
        for index, block in enumerate(self.blocks):
            tokens = block(tokens)
            if index in self.out_indices:
                grid = tokens[:, 1:].transpose(1, 2).reshape(x.shape[0], self.embed_dim, h, w)
                outs.append(grid.contiguous())
        return outs

    def layer_id(self, name: str) -> int:
        """Layer-decay depth of parameter ``name`` (relative to this module)."""
        top = name.split(".")[0]
        if top in ("cls_token", "pos_embed", "patch_embed"):
            return 0
        if top == "blocks":
            return int(name.split(".")[1]) + 1
        return self.num_layers + 1


def gsd_sincos_pos_embed(embed_dim: int, height: int, width: int, res: float) -> Tensor:
    """Scale-MAE's GSD position embedding ``[height * width, embed_dim]`` for any grid.

    torchgeo's ``get_2d_sincos_pos_embed_with_resolution`` for a non-square grid: the
    positions (column, row) are scaled by ``res``, the first half of the channels encodes
    the column, the second half the row, tokens in row-major order.
    """
    from torchgeo.models.scale_mae import get_2d_sincos_pos_embed_from_grid_torch

    rows = torch.arange(height, dtype=torch.float32)
    cols = torch.arange(width, dtype=torch.float32)
    grid = torch.stack(torch.meshgrid(cols, rows, indexing="xy"), dim=0) * res  # [2, h, w]
    return get_2d_sincos_pos_embed_from_grid_torch(embed_dim, grid.unsqueeze(1))


class ScaleMAEEncoder(ViTEncoder):
    """Scale-MAE ViT-L/16 (torchgeo ``scalemae_large_patch16``) with GSD positions.

    ``vit``: wrap this torchgeo ``ScaleMAE`` (its modules, not a copy) instead of
    building ViT-L/16; ``drop_path`` then applies to its blocks.
    """

    unused_weights = ("pos_embed", "norm", "fc_norm", "head", "mask_token")

    def __init__(
        self,
        out_indices: Sequence[int],
        drop_path: float,
        res: float = 1.0,
        vit: nn.Module | None = None,
    ) -> None:
        from torchgeo.models import scalemae_large_patch16

        super().__init__(vit if vit is not None else scalemae_large_patch16(weights=None),
                         out_indices, drop_path)
        self.res = res
        self._pos_cache: dict[tuple[Any, ...], Tensor] = {}

    def embed(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        grid = self.patch_embed.proj(x)  # [B, D, h, w]: any size, no strict img_size check
        h, w = grid.shape[-2:]
        key = (h, w, grid.device, grid.dtype)  # a constant per grid: computed once
        if key not in self._pos_cache:
            pos = gsd_sincos_pos_embed(self.embed_dim, h, w, self.res)
            self._pos_cache[key] = pos.to(device=grid.device, dtype=grid.dtype)
        pos = self._pos_cache[key]
        tokens = grid.flatten(2).transpose(1, 2) + pos
        cls = self.cls_token.expand(x.shape[0], -1, -1)  # Scale-MAE: zero position for cls
        return torch.cat((cls, tokens), dim=1), (h, w)


class DOFAEncoder(ViTEncoder):
    """DOFA ViT-B/16 (torchgeo ``dofa_base_patch16_224``) for fixed band wavelengths.

    ``dofa``: wrap this torchgeo ``DOFA`` (its modules, not a copy) instead of building
    ViT-B/16.
    """

    unused_weights = ("norm", "fc_norm", "head", "mask_token", "projector")
    wavelengths: Tensor

    def __init__(
        self,
        out_indices: Sequence[int],
        drop_path: float,
        wavelengths: Sequence[float] = DOFA_RGB_WAVELENGTHS_UM,
        dofa: nn.Module | None = None,
    ) -> None:
        from torchgeo.models import dofa_base_patch16_224

        source: Any = dofa if dofa is not None else dofa_base_patch16_224(weights=None)
        super().__init__(source, out_indices, drop_path)
        self.pos_embed = source.pos_embed  # fixed (requires_grad=False) 224 px embedding
        # Not persistent: the weight files have no such tensor; the value is a build choice.
        self.register_buffer(
            "wavelengths", torch.tensor(tuple(wavelengths), dtype=torch.float32), persistent=False
        )

    def embed(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        from timm.layers import resample_abs_pos_embed

        if x.shape[1] != self.wavelengths.numel():
            raise ValueError(
                f"DOFA got {x.shape[1]} bands but wavelengths for {self.wavelengths.numel()}"
            )
        tokens, _ = self.patch_embed(x, self.wavelengths.to(x.dtype))
        k = int(self.patch_embed.kernel_size)  # DOFAEmbedding: kernel = stride, padding 1
        h, w = ((side + 2 - k) // k + 1 for side in x.shape[-2:])
        pos = resample_abs_pos_embed(self.pos_embed, [h, w], num_prefix_tokens=1)
        cls = (self.cls_token + pos[:, :1]).expand(x.shape[0], -1, -1)
        return torch.cat((cls, tokens + pos[:, 1:]), dim=1), (h, w)


#: Encoders by torchgeo ``weights.meta["model"]`` (the registry's ``ModelSpec.encoder``),
#: with MMSeg's fine-tuning stochastic depth (Swin configs 0.3, MAE config 0.1).
ENCODERS: dict[str, Callable[[], SwinV2Encoder | ViTEncoder]] = {
    "swin_v2_t": lambda: SwinV2Encoder("swin_v2_t", drop_path=0.3),
    "swin_v2_b": lambda: SwinV2Encoder("swin_v2_b", drop_path=0.3),
    "vit_large_patch16": lambda: ScaleMAEEncoder(out_indices=(7, 11, 15, 23), drop_path=0.1),
    "dofa_base_patch16_224": lambda: DOFAEncoder(out_indices=(3, 5, 7, 11), drop_path=0.1),
}


# --------------------------------------------------------------------------- the network


class FoundationUPerNet(nn.Module):
    """Encoder (+ ViT neck) + smp's UPerNet decoder + 1x1 head, logits at input size.

    Args:
        encoder: A key of :data:`ENCODERS`.
        num_classes: Output channels.
        decoder_channels: UPerNet width; 512 as MMSeg's Swin and ViT UPerNet configs.
    """

    requires_divisible_input_shape = True

    def __init__(self, encoder: str, num_classes: int, decoder_channels: int = 512) -> None:
        super().__init__()
        from segmentation_models_pytorch.base import SegmentationHead
        from segmentation_models_pytorch.base.initialization import (
            initialize_decoder,
            initialize_head,
        )
        from segmentation_models_pytorch.decoders.upernet.decoder import UPerNetDecoder

        self.encoder: SwinV2Encoder | ViTEncoder = ENCODERS[encoder]()
        channels = self.encoder.out_channels
        self.neck: nn.Module = (
            Feature2Pyramid(channels[0]) if isinstance(self.encoder, ViTEncoder) else nn.Identity()
        )
        # smp's decoder skips the first two entries (a CNN's 1/1 and 1/2 maps); the
        # transformer has none, so those places are filled and ignored.
        self.decoder = UPerNetDecoder(
            encoder_channels=(0, 0, *channels), encoder_depth=len(channels) + 1,
            decoder_channels=decoder_channels,
        )  # fmt: skip
        self.segmentation_head = SegmentationHead(
            decoder_channels, num_classes, kernel_size=1, upsampling=4
        )
        initialize_decoder(self.decoder)
        initialize_head(self.segmentation_head)

    def forward(self, x: Tensor) -> Tensor:
        features = self.neck(self.encoder(x))
        return self.segmentation_head(self.decoder([x, x, *features]))

    def _named_layers(self) -> Iterator[tuple[str, nn.Parameter, int]]:
        top = self.encoder.num_layers + 1
        for name, param in self.named_parameters():
            if not param.requires_grad:
                continue
            if name.startswith("encoder."):
                yield name, param, self.encoder.layer_id(name[len("encoder.") :])
            else:
                yield name, param, top

    def param_groups(
        self, base_lr: float, decay: float = 1.0, weight_decay: float = 0.0
    ) -> list[dict[str, Any]]:
        """Optimizer parameter groups with layer-wise lr decay (module docstring).

        Each group has ``params``, ``lr`` (``base_lr * lr_scale``), ``lr_scale``,
        ``weight_decay`` (0 for biases, norms, tokens, position tables) and ``name``
        (``layer_<id>_decay`` / ``layer_<id>_no_decay``). ``decay=1`` gives one lr.
        """
        if not 0 < decay <= 1:
            raise ValueError(f"decay={decay!r} must be in (0, 1] (MMSeg MAE uses 0.65)")
        top = self.encoder.num_layers + 1
        groups: dict[str, dict[str, Any]] = {}
        for name, param, layer in self._named_layers():
            no_wd = (
                param.ndim <= 1
                or name.endswith(".bias")
                or any(part in name for part in _NO_WEIGHT_DECAY)
            )
            key = f"layer_{layer}_{'no_decay' if no_wd else 'decay'}"
            if key not in groups:
                scale = decay ** (top - layer)
                groups[key] = {
                    "name": key, "params": [], "lr_scale": scale, "lr": base_lr * scale,
                    "weight_decay": 0.0 if no_wd else weight_decay,
                }  # fmt: skip
            groups[key]["params"].append(param)
        return list(groups.values())


def build_foundation_net(encoder: str, num_classes: int, **kwargs: Any) -> FoundationUPerNet:
    """The network of a registry ``torchgeo`` entry (``kwargs``: ``decoder_channels``)."""
    if encoder not in ENCODERS:
        raise ValueError(f"encoder={encoder!r}: use one of {', '.join(ENCODERS)}")
    return FoundationUPerNet(encoder, num_classes, **kwargs)


def backbone_state_dict(encoder: nn.Module, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """``state`` without the weight-file tensors ``encoder`` does not use by design.

    Drops keys whose top-level name (after any wrapper prefixes such as ``module.`` or
    ``backbone.``) is in ``encoder.unused_weights``, e.g. Swin's classifier ``norm`` and
    ``head`` or Scale-MAE's fixed ``pos_embed``. Everything else is left for the loader to
    match, so a file for another backbone still fails there, by name.
    """
    unused = set(getattr(encoder, "unused_weights", ()))
    own = {key.split(".")[0] for key in encoder.state_dict()}
    kept = {}
    for key, value in state.items():
        parts = key.split(".")
        top = next((p for p in parts if p in own or p in unused), None)
        if top not in unused:
            kept[key] = value
    return kept
