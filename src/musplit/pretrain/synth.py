"""Old import path of the cell simulator, now in :mod:`musplit.detect`.

Re-exports every name that used to live here: the simulator (:mod:`musplit.detect.simulator`,
:mod:`musplit.detect.presets`, :mod:`musplit.detect.shapes`), dataset storage
(:mod:`musplit.detect.dataset`) and the Cell Tracking Challenge reader
(:mod:`musplit.detect.ctc`, with ``_resize_pair`` from :mod:`musplit.detect.frames`).
"""

from __future__ import annotations

from musplit.checkpoints.format import _atomic_write  # noqa: F401
from musplit.config.presets import _pretrain_presets as _presets  # noqa: F401

# The imports below (but _simulator) are re-exports for the old import path (hence noqa: F401).
from musplit.detect import simulator as _simulator
from musplit.detect.ctc import _frame_key, read_ctc  # noqa: F401
from musplit.detect.dataset import (  # noqa: F401
    _file_record,
    _sha256_bytes,
    _write_json,
    _write_tiff,
    verify_dataset,
    write_dataset,
)
from musplit.detect.frames import _resize_pair  # noqa: F401
from musplit.detect.presets import PRESETS, preset_config  # noqa: F401
from musplit.detect.shapes import (  # noqa: F401
    _Cell,
    _make_cell,
    _polyline_mask,
    _ramp,
    _u,
    _unit_noise,
)
from musplit.detect.simulator import (  # noqa: F401
    GENERATOR_VERSION,
    NAMESPACES,
    SynthFrame,
    _preset_id,
    frame_rng,
    generate,
    generate_frames,
    render_frame,
)

# The old module's public names: the simulator's plus storage and the CTC reader.
__all__ = sorted([*_simulator.__all__, "read_ctc", "verify_dataset", "write_dataset"])
