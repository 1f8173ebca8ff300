"""Read failures as one-line errors: tifffile's logged damage, missing or unknown codecs.

tifffile logs (rather than raises) most damage, and raises ``ValueError`` for a codec that is
not installed; these helpers tell the two apart so the message names the fix.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
from collections.abc import Iterator
from typing import Any

import tifffile

from musplit.errors import InputError


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


class _RecordErrors(logging.Handler):
    """Collects tifffile's ERROR records of this thread (tifffile logs, not raises, on most
    damage: a truncated file silently loses its last pages otherwise)."""

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.thread = threading.get_ident()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread:
            self.messages.append(record.getMessage())


@contextlib.contextmanager
def _tifffile_errors() -> Iterator[list[str]]:
    handler = _RecordErrors()
    log = logging.getLogger("tifffile")
    log.addHandler(handler)
    try:
        yield handler.messages
    finally:
        log.removeHandler(handler)


# tifffile's words for a codec it cannot use: "<COMPRESSION.LZW: 5> requires the 'imagecodecs'
# package", "<COMPRESSION.X: n> not supported", "65535 is not a known COMPRESSION", and the same
# for predictors.
_CODEC_WORDS = re.compile(
    r"imagecodecs|(COMPRESSION|PREDICTOR)\b.*\b(not supported|not implemented)"
    r"|is not a known (COMPRESSION|PREDICTOR)"
)
_CODEC_NAME = re.compile(
    r"<(COMPRESSION|PREDICTOR)\.(\w+): (\d+)>|(\d+) is not a known (COMPRESSION|PREDICTOR)"
)


def _codec_error(name: str, detail: str) -> InputError | None:
    """The one-line error for a TIFF codec that tifffile cannot use here, or None when
    ``detail`` (an exception's text) is about something else (damaged data, ...)."""
    if not _CODEC_WORDS.search(detail):
        return None
    found = _CODEC_NAME.search(detail)
    if found and found.group(1):
        what = f"{found.group(1).lower()} {found.group(2)} (TIFF code {found.group(3)})"
    elif found:
        what = f"an unknown {found.group(5).lower()} (TIFF code {found.group(4)})"
    else:
        what = "a compression"
    if "imagecodecs" in detail:
        return InputError(
            f"{name} uses {what}, which needs the imagecodecs package to decode: "
            "pip install imagecodecs"
        )
    return InputError(
        f"{name} uses {what}, which the installed tifffile {tifffile.__version__} and "
        "imagecodecs cannot decode: pip install imagecodecs (or a newer one: pip install -U "
        "imagecodecs), or save the image uncompressed or LZW-compressed"
    )


def _check_codecs(page: Any, name: str) -> None:
    """Refuse, before any pixel is read, a page whose pixel type, compression or predictor this
    installation cannot decode (tifffile resolves the codec; nothing is decoded)."""
    if page.dtype is None:
        raise InputError(
            f"{name} has a pixel type tifffile cannot read ({page.bitspersample}-bit, "
            f"SampleFormat {int(page.sampleformat)})"
        )
    comp = int(page.compression)
    if comp != 1:
        _require_codec(tifffile.TIFF.DECOMPRESSORS, comp, "compression", name)
    pred = int(getattr(page, "predictor", 1) or 1)
    if pred != 1 and comp not in tifffile.TIFF.IMAGE_COMPRESSIONS:
        _require_codec(tifffile.TIFF.UNPREDICTORS, pred, "predictor", name)


def _require_codec(table: Any, code: int, what: str, name: str) -> None:
    """Look ``code`` up in one of tifffile's codec tables (``DECOMPRESSORS``, ``UNPREDICTORS``);
    refuse the file when the codec is missing or unknown."""
    try:
        table[code]
    except KeyError as exc:
        raise _codec_error(name, str(exc)) or InputError(
            f"{name} uses {what} {code}, which tifffile cannot decode"
        ) from None
