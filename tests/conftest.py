"""Shared test settings."""

import importlib.util
import logging
import os
import shutil

import pytest
import torch

# The napari plugin's tests need napari (pip install -e '.[napari]'; .ci/run installs it): they
# are not collected without it. With it they drive a real napari viewer, OpenGL canvas included,
# so they need an X display: pytest-xvfb (in the extra) starts a virtual one where Xvfb is
# installed (Debian: apt-get install xvfb; .ci/run does this).
collect_ignore = []
if importlib.util.find_spec("napari") is None:
    collect_ignore.append("test_napari_plugin.py")
elif not os.environ.get("DISPLAY") and shutil.which("Xvfb") is None:
    raise pytest.UsageError(
        "the napari plugin's tests need an X display: install Xvfb (apt-get install xvfb) or run "
        "them on a desktop; without the napari extra they are not collected")
# The BioImage Model Zoo export's test needs bioimageio.core (pip install -e '.[bmz]'; .ci/run
# installs it).
if importlib.util.find_spec("bioimageio") is None or \
        importlib.util.find_spec("bioimageio.core") is None:
    collect_ignore.append("test_bmz_export.py")


# Training and prediction set their own thread count (musplit.runtime.apply_threads); in the
# tests that is one thread, for the reason below. Tests of the default itself unset it.
os.environ["MUSPLIT_THREADS"] = "1"


@pytest.fixture(autouse=True)
def _one_torch_thread():
    # Tiny tensors gain nothing from intra-op threads, and with pytest-xdist running one
    # worker per core, extra threads only oversubscribe the CPU (30-50x slower when busy).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _logger_levels_restored():
    # A benchmark's main() (tests/test_pcmc_bench.py runs one) quietens the musplit and
    # Lightning loggers for its own run; without this, every later test in the same worker
    # that looks for a warning in the log would find nothing.
    names = ("musplit", "lightning", "lightning.pytorch", "lightning.fabric")
    levels = {name: logging.getLogger(name).level for name in names}
    yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
