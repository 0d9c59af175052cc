"""The table's GMACs are what MMSeg's ``tools/analysis_tools/get_flops.py`` reports as "FLOPs".

``get_flops.py`` calls mmengine's ``get_model_complexity_info`` (a multiply-add is one, plus
per-element terms for normalisation, upsampling and pooling). That function, installed as
``./workbook test`` installs it, counts the same registry models on the same input as
:func:`loveda_utils.benchmark.measure.count_complexity`: one model per family the table holds
(torchvision with squeeze-excitation and adaptive pooling, smp with BatchNorm and upsampling, a
transformer with LayerNorm and attention, an EO Swin-V2 under UPerNet). Neither side counts the
normalisation of the input (``get_flops.py`` counts the network on ``data_preprocessor``'s
output).
"""

from __future__ import annotations

import pytest
import torch

from loveda_utils.benchmark.measure import count_complexity
from loveda_utils.models import build_model

SIZE = 64


@pytest.mark.parametrize(
    "name",
    [
        "lraspp_mobilenet_v3_large",
        "unet_resnet18",
        "segformer_mit_b0",
        "upernet_swin_v2_t_satlas_s2",
    ],
)
def test_mmseg_get_flops_counts_our_gmacs(mmseg_ref, name: str) -> None:
    from mmengine.analysis import get_model_complexity_info

    model = build_model(name, pretrained="none").eval()
    ours = count_complexity(model, size=SIZE, device="cpu")
    image = torch.zeros(1, 3, SIZE, SIZE, dtype=torch.uint8)
    with torch.no_grad():
        theirs = get_model_complexity_info(model, inputs=(image,), show_table=False,
                                           show_arch=False)["flops"]  # fmt: skip
    # mmengine sums integers; ours sums per-operator floats: equal to float64 rounding.
    assert ours.gmacs * 1e9 == pytest.approx(theirs, rel=1e-9)
    # ``gflops`` is torch's own count, 2 per multiply-add of the matrix operations only: not
    # twice MMSeg's figure.
    assert ours.gflops / 2 < ours.gmacs
