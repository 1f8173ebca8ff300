"""Cell detection: the cell simulator, detector networks, detection fine-tuning and evaluation.

Submodules (docs/detection.md): ``simulator`` (synthetic fluorescence frames with exact instance
masks; ``presets``, ``shapes``), ``dataset`` (synthetic datasets on disk), ``ctc`` (Cell
Tracking Challenge reader), ``models`` (CCFViT, CellCentroidFormer), ``targets``, ``loss``,
``decode``, ``frames``, ``train`` (fine-tuning), ``evaluate`` (running and scoring a detector),
``coco`` (COCO-style box evaluation) and ``checkpoint``. Nothing heavy is imported here.
"""
