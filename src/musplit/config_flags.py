"""Old import path of :mod:`musplit.config.flags` (CLI flags -> config overrides)."""

from musplit.config.flags import *  # noqa: F403
from musplit.config.flags import __all__  # noqa: F401
