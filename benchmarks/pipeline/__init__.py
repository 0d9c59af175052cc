"""The pipeline benchmark: is evaluation as fast as the model allows, and is its fps figure true?

Measured side by side in one run, on the same model, tiles and resolution (one module each):

1-2. :mod:`.ceiling`: the model's forward pass alone (the **ceiling**), on uint8 batches already
   on the device (same batch size, memory format, autocast and threads as the evaluation), and
   **ours**: PNG files on disk to the finished confusion matrix, through
   :class:`~loveda_utils.data.datamodule.LoveDADataModule`'s ``val_dataloader`` (PNG decode: in
   bursts on every core between forward passes without workers
   (:class:`~loveda_utils.data.datamodule.ReadAhead`), else in its workers; uint8) and
   :func:`~loveda_utils.evaluation.loop.evaluate` (transfer, normalisation on the device,
   forward, argmax, one ``bincount`` per batch). Beside the ratio: what our path adds per tile,
   and the decode and count time per tile it cannot avoid, measured in the same run.
3. :mod:`.versus_torchgeo`: torchgeo's own path on the same tiles and the same smp UNet weights:
   its ``LoveDADataModule`` and ``SemanticSegmentation`` task through Lightning's
   ``Trainer.validate``. Both paths are scored the same MMSeg way and must agree exactly.
4. :mod:`.train`: training steps of :class:`~loveda_utils.training.task.SegmentationTask` in our
   Trainer against a plain PyTorch loop doing the same steps.
5. :mod:`.fps`: :func:`~loveda_utils.benchmark.measure.measure_fps` against an independent timing
   of the same model and input with ``torch.utils.benchmark``.
6. :mod:`.memory`: peak memory of whole evaluations of 8, 32 and 128 tiles, each in a fresh
   process.
7. :mod:`.ablation`: what each optimisation of the evaluation path is worth, one switched off at
   a time, plus the per-tile cost of the decoders and of the label and confusion-matrix kernels.

Shared by all: :mod:`.tiles` (the same files for every path), :mod:`.settings`, :mod:`.timing`
(interleaved rounds, paired ratios) and :mod:`.report` (the targets, the table, the ratio lines);
:mod:`.cli` is the command.

The paths compared are interleaved (the order alternates every round) and repeated
(``--rounds``). A ratio is the median over rounds of the two paths' times within a round
(adjacent runs see the same machine, so a drifting shared host cancels out); the ratio of the
best runs is printed beside it, and the table shows best and median times and the share of the
CPUs that other processes used. The table comes first, the ratios against the targets last
(:data:`~.report.TARGETS`; a withdrawn target, :data:`~.report.WITHDRAWN`, prints its ratio as a
measurement without a verdict). The numbers of a run are recorded in ``benchmarks/RESULTS.md``.

Run ``python -m benchmarks.pipeline --help`` (or ``./workbook bench --help``).
"""
