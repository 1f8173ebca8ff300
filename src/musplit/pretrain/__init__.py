"""Self-supervised pre-training by pseudo-colorizing masked cells (PCMC, spec/pcmc.md).

Submodules: ``models`` (ContextBlock, ViT/PcolorMAE, MobileViT, CCFViT, CellCentroidFormer),
``synth`` (synthetic fluorescence cells with exact instance masks), ``detection`` (centroid-heatmap
targets, loss, decoding, COCO evaluation). Nothing heavy is imported here.
"""
