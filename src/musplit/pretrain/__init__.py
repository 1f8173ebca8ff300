"""Self-supervised pre-training by pseudo-colorizing masked cells (PCMC; docs/pretraining.md).

Submodules: ``colormap`` (the pseudo-spectral target), ``masks``, ``objectives``, ``augment``,
``backbones`` (ContextBlock, ViT, EfficientNetV2-S trunk), ``models`` (PcolorMAE), ``transfer``
(encoder weights between models), ``train`` (the pre-training loop), ``result`` (its result and
checkpoint) and ``usplit`` (pre-training a µSplit encoder). The cell simulator and the detectors
are in :mod:`musplit.detect`; ``synth`` and ``detection`` here are their old import paths.
Nothing heavy is imported here.
"""
