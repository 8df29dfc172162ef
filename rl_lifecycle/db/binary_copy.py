"""PostgreSQL binary COPY for fixed-width rows, straight to and from numpy.

Every row of a binary COPY is `int16 field count` then, per field, `int32 length` and the bytes.
When every field has a fixed width (timestamptz, float8, bool, and bytea of a known length), rows
are fixed-size records, so a whole COPY payload is one numpy structured array: no per-row Python.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import psycopg
from psycopg import sql

_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
_HEADER = _SIGNATURE + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
_TRAILER = b"\xff\xff"
PG_EPOCH_US = 946_684_800_000_000  # 2000-01-01 in Unix microseconds: PostgreSQL's timestamp origin


@dataclass(frozen=True)
class Field:
    """A fixed-width column: its name and the numpy dtype of its bytes on the wire."""

    name: str
    dtype: np.dtype | str | tuple

    @property
    def numpy_dtype(self) -> np.dtype:
        return np.dtype(self.dtype)


def timestamptz(name: str) -> Field:
    return Field(name, ">i8")


def float8(name: str) -> Field:
    return Field(name, ">f8")


def boolean(name: str) -> Field:
    return Field(name, "?")


def raw_bytes(name: str, dtype: str, count: int) -> Field:
    """A bytea holding `count` items of `dtype` (e.g. little-endian float64 vectors)."""
    return Field(name, (dtype, (count,)))


def row_dtype(fields: Sequence[Field]) -> np.dtype:
    layout: list[tuple] = [("_nfields", ">i2")]
    for f in fields:
        layout.append((f"_len_{f.name}", ">i4"))
        dt = f.numpy_dtype
        layout.append((f.name, dt.base, dt.shape) if dt.shape else (f.name, dt))
    return np.dtype(layout)


def _header_length(payload: memoryview) -> int:
    if bytes(payload[: len(_SIGNATURE)]) != _SIGNATURE:
        raise ValueError("not a PostgreSQL binary COPY payload")
    ext_len = int.from_bytes(payload[15:19], "big")
    return 19 + ext_len


def decode(payload: bytes | bytearray, fields: Sequence[Field]) -> np.ndarray:
    """Binary COPY bytes -> structured array; checks that every row has the expected layout."""
    dtype = row_dtype(fields)
    view = memoryview(payload)
    start = _header_length(view)
    body = view[start : len(view) - len(_TRAILER)]
    if len(body) % dtype.itemsize:
        raise ValueError("binary COPY rows are not of the expected fixed width (a NULL or a vector of another length?)")
    rows = np.frombuffer(body, dtype=dtype)
    if len(rows):
        if not np.all(rows["_nfields"] == len(fields)):
            raise ValueError("binary COPY rows carry an unexpected number of fields")
        for f in fields:
            if not np.all(rows[f"_len_{f.name}"] == f.numpy_dtype.itemsize):
                raise ValueError(f"column {f.name!r} is not {f.numpy_dtype.itemsize} bytes in every row")
    return rows


def encode(fields: Sequence[Field], columns: dict[str, np.ndarray]) -> bytes:
    """Columns -> binary COPY bytes ready for `COPY ... FROM STDIN (FORMAT BINARY)`."""
    n = len(next(iter(columns.values()))) if columns else 0
    rows = np.empty(n, dtype=row_dtype(fields))
    rows["_nfields"] = len(fields)
    for f in fields:
        rows[f"_len_{f.name}"] = f.numpy_dtype.itemsize
        rows[f.name] = columns[f.name]
    return _HEADER + rows.tobytes() + _TRAILER


def copy_out(conn: psycopg.Connection, query: sql.Composable, fields: Sequence[Field]) -> np.ndarray:
    statement = sql.SQL("COPY ({}) TO STDOUT (FORMAT BINARY)").format(query)
    chunks = bytearray()
    with conn.cursor() as cur, cur.copy(statement) as copy:
        for chunk in copy:
            chunks += chunk
    return decode(chunks, fields)


def read_columns(
    conn: psycopg.Connection, query: sql.Composable, fields: Sequence[Field], order_by: str
) -> dict[str, np.ndarray]:
    """The fixed-width columns of `query`'s rows, ascending by the column `order_by`, one array each.

    Each column arrives as one binary PostgreSQL array (`array_send(array_agg(...))`): one value per
    column instead of one COPY message per row, which psycopg handles one by one in Python; for the
    tens of thousands of candles a decision reads, 20-35% less time than `copy_out`.
    """
    row = conn.execute(sql.SQL("SELECT {} FROM ({}) AS q").format(array_columns(fields), query), binary=True).fetchone()
    return decode_columns(row, fields, order_by)


def array_columns(fields: Sequence[Field], where: sql.Composable | None = None) -> sql.Composable:
    """Select-list items aggregating each field into one binary array, optionally only rows matching `where`."""
    only = sql.SQL("") if where is None else sql.SQL(" FILTER (WHERE {})").format(where)
    return sql.SQL(", ").join(
        sql.SQL("array_send(array_agg({}){})").format(sql.Identifier(f.name), only) for f in fields
    )


def decode_columns(payloads: Sequence[bytes | None], fields: Sequence[Field], order_by: str) -> dict[str, np.ndarray]:
    """The arrays selected by `array_columns`, sorted by `order_by`. All aggregates of one SELECT see the
    rows in the same order, so the columns stay aligned; that order is the query's in practice and is
    sorted here when it is not (cheaper than an ORDER BY per aggregate)."""
    columns = {f.name: _array_values(payload, f) for f, payload in zip(fields, payloads, strict=True)}
    key = columns[order_by]
    if len(key) > 1 and not np.all(key[1:] >= key[:-1]):
        order = np.argsort(key, kind="stable")
        columns = {name: values[order] for name, values in columns.items()}
    return columns


_ARRAY_HEADER = 20  # one dimension: ndim, has-null flag, element type, size, lower bound (int32 each)


def _array_values(payload: bytes | None, field: Field) -> np.ndarray:
    if payload is None:  # array_agg of no rows
        return np.empty(0, dtype=field.numpy_dtype)
    ndim, has_null, _oid, size, _lower = np.frombuffer(payload, dtype=">i4", count=5)
    if ndim != 1 or has_null:
        raise ValueError(f"column {field.name!r}: expected a one-dimensional array without NULL")
    items = np.frombuffer(payload, dtype=[("len", ">i4"), ("value", field.numpy_dtype)], offset=_ARRAY_HEADER,
                          count=int(size))
    if not np.all(items["len"] == field.numpy_dtype.itemsize):
        raise ValueError(f"column {field.name!r} is not {field.numpy_dtype.itemsize} bytes in every row")
    return items["value"]


def copy_in(conn: psycopg.Connection, table: str, fields: Sequence[Field], columns: dict[str, np.ndarray]) -> None:
    statement = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
        sql.Identifier(table), sql.SQL(", ").join(sql.Identifier(f.name) for f in fields)
    )
    payload = encode(fields, columns)
    with conn.cursor() as cur, cur.copy(statement) as copy:
        copy.write(payload)


def us_to_pg(ts_us: np.ndarray) -> np.ndarray:
    return np.asarray(ts_us, dtype=np.int64) - PG_EPOCH_US


def pg_to_us(ts_pg: np.ndarray) -> np.ndarray:
    return np.asarray(ts_pg, dtype=np.int64) + PG_EPOCH_US


def pg_timestamp(ts_us: int) -> sql.Composable:
    """A timestamptz literal from epoch microseconds, exact (no float or timezone rounding)."""
    return sql.SQL("(to_timestamp(0) + {} * interval '1 microsecond')").format(sql.Literal(int(ts_us)))
