"""Old home of the reference µSplit checkpoint import, now :mod:`musplit.checkpoints.reference`.

Re-exports its names so that ``from musplit.models.official import import_official`` (and the
rest) keeps working.
"""

import musplit.checkpoints.reference as _reference
from musplit.checkpoints.reference import (  # noqa: F401 - re-exported
    PAPER_PARAMETER_COUNTS,
    _load_strict,
    _map_keys,
    _translate,
    import_official,
    infer_model_config,
    load_reference_checkpoint,
    musplit_to_reference,
    read_reference_config,
    reference_to_musplit,
)
from musplit.checkpoints.reference_files import _StubUnpickler  # noqa: F401 - re-exported

__all__ = list(_reference.__all__)
