"""Bounds on what a candle file may hold, checked while it is streamed: before anything is parsed.

Every way a candle file enters (`rl-lifecycle ingest`, the inbox sensor) reads it through
`rl_lifecycle.candles.importer`, which applies `IntakeLimits` (from the RL_INGEST_* variables) in a
first pass that keeps nothing but counters and a few bytes of the header line, so a decompression bomb or
a file with millions of columns is refused in constant memory, before polars sees a byte:

- the file as stored (compressed or not): `RL_INGEST_MAX_FILE_BYTES`;
- the CSV text after decompression (`.gz`, `.zip`), or the uncompressed size of a Parquet file's candle
  columns: `RL_INGEST_MAX_DECOMPRESSED_BYTES`;
- columns of the header line (or of a Parquet schema): `RL_INGEST_MAX_COLUMNS`;
- bytes of one line: `RL_INGEST_MAX_LINE_BYTES`;
- data rows (CSV: lines after the first; Parquet: rows): `RL_INGEST_MAX_ROWS`.

Each refusal is a `UserInputError` naming the limit's variable. File content quoted in a message, a
report or a log goes through `excerpt` (at most `EXCERPT_CHARS` characters).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rl_lifecycle.errors import UserInputError

__all__ = ["EXCERPT_CHARS", "CsvScan", "IntakeLimits", "excerpt", "quoted"]

EXCERPT_CHARS = 200  # file content in messages, reports and logs: at most this much of a row
_LINE_EXCERPT = 60  # the start of a line too long to show
_WHITESPACE = b" \t\r\n\x0b\x0c"
_SEPARATORS = (b",", b";", b"\t", b"|")
_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class IntakeLimits:
    """What one candle file may hold (see the module doc); `from_settings()` reads RL_INGEST_*."""

    max_file_bytes: int = 1 << 30
    max_decompressed_bytes: int = 1 << 30
    max_columns: int = 64
    max_line_bytes: int = 16_384
    max_rows: int = 10_000_000

    @classmethod
    def from_settings(cls, settings=None) -> IntakeLimits:
        if settings is None:
            from rl_lifecycle.settings import load_settings

            settings = load_settings()
        return cls(
            max_file_bytes=settings.ingest_max_file_bytes,
            max_decompressed_bytes=settings.ingest_max_decompressed_bytes,
            max_columns=settings.ingest_max_columns,
            max_line_bytes=settings.ingest_max_line_bytes,
            max_rows=settings.ingest_max_rows,
        )


def excerpt(text: object, limit: int = EXCERPT_CHARS) -> str:
    """At most `limit` characters of `text` (file content), marked when cut."""
    text = str(text)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


def quoted(text: object, limit: int = EXCERPT_CHARS) -> str:
    """`repr` of an excerpt: file content as a message quotes it."""
    text = str(text)
    return repr(text) if len(text) <= limit else f"{text[:limit]!r}… ({len(text)} characters)"


def _size(n: int) -> str:
    for unit, factor in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= factor:
            return f"{n} bytes ({n / factor:.3g} {unit})"
    return f"{n} bytes"


def refuse(label: str, what: str, limit: int, variable: str, *, bytes_: bool = True) -> UserInputError:
    """The error for a limit: names the file, what exceeded it, the limit and its variable."""
    shown = _size(limit) if bytes_ else str(limit)
    return UserInputError(
        f"candle file {label!r} {what} the limit of {shown} ({variable}); nothing was written. "
        f"Split the file, or raise {variable} if the file is genuine"
    )


class CsvScan:
    """Stream a CSV text through the limits, chunk by chunk, keeping only counters and the header's start.

    `feed` raises `UserInputError` as soon as a limit is exceeded. After `finish`: `header_offset` is the
    byte offset of the header line (after a UTF-8 BOM and blank lines), `skipped_lines` the blank lines
    before it, `total` the bytes seen; `header_offset is None` means the text holds nothing but blanks.
    Lines are physical lines (a quoted newline counts), so the row and line checks err on the safe side.
    """

    def __init__(self, label: str, limits: IntakeLimits, *, compressed: bool = False) -> None:
        self.label = label
        self.limits = limits
        self.compressed = compressed
        self.total = 0
        self.lines = 0  # newlines seen
        self.header_offset: int | None = None
        self.skipped_lines = 0
        self._line_len = 0  # bytes of the current (unfinished) line
        self._line_start = b""  # its first bytes, for a message
        self._header = bytearray()  # the header line's first max_line_bytes + 1 bytes, until checked
        self._header_done = False

    def feed(self, chunk: bytes | memoryview) -> None:
        if not len(chunk):
            return
        chunk = bytes(chunk) if not self._header_done else chunk
        if self.total == 0 and bytes(chunk[:3]) == _BOM:
            self.total, chunk = 3, chunk[3:]
            if not len(chunk):
                return
        start = self.total
        self.total += len(chunk)
        limits = self.limits
        if self.total > limits.max_decompressed_bytes:
            what = "decompresses to more than" if self.compressed else "holds more CSV text than"
            raise refuse(self.label, what, limits.max_decompressed_bytes, "RL_INGEST_MAX_DECOMPRESSED_BYTES")
        if not self._header_done:
            self._find_header(bytes(chunk), start)
        newlines = np.flatnonzero(np.frombuffer(chunk, dtype=np.uint8) == 10)
        if newlines.size:
            # lengths of the lines this chunk ends: the first continues the current line
            ends = np.empty(newlines.size, dtype=np.int64)
            ends[0] = self._line_len + int(newlines[0])
            if newlines.size > 1:
                ends[1:] = np.diff(newlines) - 1
            longest = int(np.argmax(ends))
            if ends[longest] > limits.max_line_bytes:
                begin = 0 if longest == 0 else int(newlines[longest - 1]) + 1
                head = ((self._line_start if longest == 0 else b"") + bytes(chunk[begin:begin + _LINE_EXCERPT]))
                self._too_long(self.lines + longest + 1, head)
            self.lines += int(newlines.size)
            if self.lines > limits.max_rows + 1 + self.skipped_lines:
                raise refuse(self.label, "has more data rows than", limits.max_rows, "RL_INGEST_MAX_ROWS", bytes_=False)
            tail = chunk[int(newlines[-1]) + 1:]
            self._line_len = len(tail)
            self._line_start = bytes(tail[:_LINE_EXCERPT])
        else:
            self._line_len += len(chunk)
            if len(self._line_start) < _LINE_EXCERPT:
                self._line_start += bytes(chunk[:_LINE_EXCERPT - len(self._line_start)])
        if self._line_len > limits.max_line_bytes:
            self._too_long(self.lines + 1, self._line_start)

    def finish(self) -> None:
        if not self._header_done and self.header_offset is not None:
            self._check_header()
        if self._line_len:  # a last line without a newline is a row all the same
            self.lines += 1
            self._line_len = 0
            if self.lines > self.limits.max_rows + 1 + self.skipped_lines:
                raise refuse(self.label, "has more data rows than", self.limits.max_rows, "RL_INGEST_MAX_ROWS",
                             bytes_=False)

    def _find_header(self, chunk: bytes, start: int) -> None:
        if self.header_offset is None:
            stripped = chunk.lstrip(_WHITESPACE)
            if not stripped:
                self.skipped_lines += chunk.count(b"\n")
                return
            first = len(chunk) - len(stripped)  # the first byte that is not blank
            line_begin = chunk.rfind(b"\n", 0, first) + 1
            self.skipped_lines += chunk.count(b"\n", 0, line_begin)
            self.header_offset = start + line_begin
            chunk = chunk[line_begin:]
        room = self.limits.max_line_bytes + 1 - len(self._header)
        newline = chunk.find(b"\n", 0, room)
        self._header += chunk[: room if newline < 0 else newline]
        if newline >= 0 or len(self._header) > self.limits.max_line_bytes:
            self._check_header()

    def _check_header(self) -> None:
        self._header_done = True
        cut = len(self._header) > self.limits.max_line_bytes  # only the line's start was kept
        columns = max(self._header.count(sep) for sep in _SEPARATORS) + 1
        self._header = bytearray()
        if columns > self.limits.max_columns:
            raise refuse(self.label, f"has {'at least ' if cut else ''}{columns} columns in its first line, over",
                         self.limits.max_columns, "RL_INGEST_MAX_COLUMNS", bytes_=False)

    def _too_long(self, line: int, head: bytes) -> None:
        shown = quoted(head.split(b"\n", 1)[0][:_LINE_EXCERPT].decode("utf-8", errors="replace"), _LINE_EXCERPT)
        raise refuse(self.label, f"has a line too long: line {line} (starting {shown}) is longer than",
                     self.limits.max_line_bytes, "RL_INGEST_MAX_LINE_BYTES")
