"""BioImage Model Zoo export (docs/bmz.md): a self-contained TorchScript model that takes the raw
superimposed image and returns the split, with lateral context and inner-padded tiles built
inside, packaged as a bioimageio 0.5 model (:func:`musplit.bmz.export.export_bmz`)."""
