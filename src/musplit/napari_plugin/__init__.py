"""The napari plugin (``pip install 'musplit[napari]'``; docs/napari.md).

Registered through the ``napari.manifest`` entry point (``napari.yaml`` next to this file): a
*Split* widget that predicts a layer with a trained checkpoint in a worker thread, a *Train*
widget that trains on target layers with a live curve and preview, and sample data. Nothing
here is imported by the rest of musplit, so the package works without napari.
"""
