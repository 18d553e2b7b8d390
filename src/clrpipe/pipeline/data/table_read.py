"""Reading a user's table (`data: table`) from its bytes. Pure: the stage reads the file.

`read_table`: CSV (`,`), TSV (tab) or Parquet, from `data.format` or the file's suffix
(`.csv`, `.tsv`/`.tab`, `.parquet`/`.pq`, each optionally `.gz`/`.bz2`/`.xz`; gzip, bzip2 and xz
content is decompressed whatever the suffix). Text tables are UTF-8 with a header line; UTF-16,
zip archives, Excel workbooks and binary files are refused with what to do (`data.cardio`'s
detection). Cells pandas reads as missing (blank, `NA`, `NaN`, `null`, `None`, `#N/A`, ...) are
missing values; text cells are trimmed.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import lzma
import zlib
from pathlib import PurePath

import pandas as pd

from clrpipe.errors import ClrpipeError, first_line
from clrpipe.pipeline.data.cardio import decode_text, not_utf8_text
from clrpipe.pipeline.data.table_schema import is_bool, is_text

__all__ = ["FORMATS", "read_table"]

FORMATS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".parquet": "parquet", ".pq": "parquet"}
COMPRESSED_SUFFIXES = (".gz", ".gzip", ".bz2", ".xz", ".zst")
SEPARATORS = {"csv": ",", "tsv": "\t"}
_DECOMPRESS = (  # magic bytes, name, decompressor
    (b"\x1f\x8b", "gzip", gzip.decompress),
    (b"BZh", "bzip2", bz2.decompress),
    (b"\xfd7zXZ\x00", "xz", lzma.decompress),
)


def read_table(raw: bytes, source: str, format: str | None) -> pd.DataFrame:
    """The table in `raw` (the bytes of the file `source`) as a frame, columns as in its header.

    `format` (`data.format`: csv, tsv or parquet) or, when None, the suffix of `source` says how
    to read it. Anything that is not such a table is a one-line error saying what was expected."""
    kind = format if format is not None else _format_of(raw, source)
    if kind not in (*SEPARATORS, "parquet"):
        raise ClrpipeError(f"data.format: expected one of csv, tsv, parquet, got {kind!r}")
    if not raw.strip():
        raise ClrpipeError(f"{source}: empty file; expected a header line and data rows")
    raw = _decompressed(raw, source, kind)
    frame = _read_parquet(raw, source) if kind == "parquet" else _read_text(raw, source, kind)
    names = [str(c).strip() for c in frame.columns]
    repeated = [c for i, c in enumerate(names) if c in names[:i]]
    if repeated:
        raise ClrpipeError(f"{source}: column '{repeated[0]}' appears more than once")
    frame.columns = names
    if frame.shape[1] == 0:
        raise ClrpipeError(f"{source}: no columns; expected a table with a header")
    if frame.empty:
        raise ClrpipeError(f"{source}: no data rows after the header")
    return frame


def _format_of(raw: bytes, source: str) -> str:
    path = PurePath(source)
    suffixes = [s.lower() for s in path.suffixes]
    while suffixes and suffixes[-1] in COMPRESSED_SUFFIXES:
        suffixes.pop()
    if suffixes and suffixes[-1] in FORMATS:
        return FORMATS[suffixes[-1]]
    named = "".join(path.suffixes[max(len(suffixes) - 1, 0):])
    shown = f"suffix {named!r}" if named else "no suffix"
    hint = ""
    if raw.startswith(b"PAR1"):
        hint = " (the content is Parquet: set data.format=parquet)"
    elif "Excel" in (not_utf8_text(raw, source) or ""):
        hint = " (it is an Excel workbook: export the sheet as CSV)"
    raise ClrpipeError(
        f"{source}: unknown table kind ({shown}); expected .csv, .tsv, .tab, .parquet or .pq "
        f"(optionally .gz, .bz2 or .xz), or set data.format to csv, tsv or parquet{hint}"
    )


def _decompressed(raw: bytes, source: str, kind: str) -> bytes:
    for magic, name, decompress in _DECOMPRESS:
        if raw.startswith(magic) and (name != "bzip2" or raw[3:4].isdigit()):
            try:
                raw = decompress(raw)
            except (OSError, EOFError, ValueError, lzma.LZMAError, zlib.error) as err:
                raise ClrpipeError(
                    f"{source}: {name}-compressed but does not decompress ({first_line(err)}); "
                    f"expected a complete {name} file"
                ) from None
            if not raw.strip():
                raise ClrpipeError(
                    f"{source}: empty file once decompressed; expected a header line and data "
                    "rows"
                )
            return raw
    return raw


def _sibling(source: str, kind: str) -> str:
    """A file name next to `source` for a converted copy (never `source` itself)."""
    path = PurePath(source)
    while path.suffix.lower() in COMPRESSED_SUFFIXES:
        path = path.with_suffix("")
    if str(path) == source:
        path = path.with_name(f"{path.stem}-utf8{path.suffix or '.' + kind}")
    return str(path)


def _adapted(message: str, source: str, kind: str) -> str:
    """`clrpipe.pipeline.data.cardio`'s cardio wording made right for a user's CSV or TSV table."""
    label = kind.upper()
    return (
        message.replace("cardio_train.csv", _sibling(source, kind))
        .replace("(UTF-8, ';' or ',' separated)", "(UTF-8, ',' separated)")
        .replace("extract the CSV first", f"extract the {label} first")
        .replace("CSV table", f"{label} table")
        .replace(" and use that file", " and set data.raw to that file")
    )


def _read_text(raw: bytes, source: str, kind: str) -> pd.DataFrame:
    label, separator = kind.upper(), SEPARATORS[kind]
    if raw.startswith(b"PAR1"):
        raise ClrpipeError(
            f"{source}: a Parquet file, not a {label} table; set data.format=parquet (or name "
            "the file .parquet)"
        )
    try:
        text = decode_text(raw, source)
    except ClrpipeError as err:
        raise ClrpipeError(_adapted(str(err), source, kind)) from None
    text = text.lstrip("\ufeff")
    header = text.split("\n", 1)[0]
    if not header.strip():
        raise ClrpipeError(
            f"{source}: the first line is blank; expected a header line naming the columns"
        )
    names = [name.strip() for name in next(csv.reader([header], delimiter=separator))]
    if "" in names:
        raise ClrpipeError(
            f"{source}: column {names.index('') + 1} of the header has no name; expected a "
            "header line naming every column"
        )
    repeated = [c for i, c in enumerate(names) if c in names[:i]]
    if repeated:
        raise ClrpipeError(f"{source}: column '{repeated[0]}' appears more than once")
    try:
        frame = pd.read_csv(
            io.StringIO(text), sep=separator, skipinitialspace=True, low_memory=False
        )
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as err:
        raise ClrpipeError(
            f"{source}: not a {separator!r}-separated {label} table ({first_line(err)}); "
            "expected a header line and rows of as many fields (set data.format if the file "
            "is another kind)"
        ) from None
    if not frame.index.equals(pd.RangeIndex(len(frame))):  # pandas took fields as an index
        raise ClrpipeError(
            f"{source}: the data rows have more fields than the header's {len(names)} names; "
            "expected a header line naming every column (or no trailing separator)"
        )
    if len(names) == frame.shape[1]:
        frame.columns = names
    if frame.shape[1] == 1:
        for other, other_kind in (("\t", "tsv"), (",", "csv")):
            if other != separator and other in header:
                raise ClrpipeError(
                    f"{source}: one column read with separator {separator!r}, but the header "
                    f"has {other!r}; set data.format={other_kind}"
                )
        if ";" in header:
            raise ClrpipeError(
                f"{source}: one column read with separator {separator!r}, but the header has "
                "';'; re-save the table ',' separated (csv) or tab separated (tsv)"
            )
    for column in frame.columns:
        if is_text(frame[column]) and not is_bool(frame[column]):
            values = frame[column].astype("str").str.strip()
            frame[column] = values.mask(frame[column].isna() | (values == ""))
    return frame


def _read_parquet(raw: bytes, source: str) -> pd.DataFrame:
    if not raw.startswith(b"PAR1"):
        looks = " (it looks like text: set data.format=csv or tsv)"
        if not_utf8_text(raw, source) is not None or b"\x00" in raw[:4096]:
            looks = ""
        raise ClrpipeError(
            f"{source}: not a Parquet file (it does not start with PAR1){looks}; expected "
            "Parquet (data.format=parquet or a .parquet/.pq name)"
        )
    try:
        frame = pd.read_parquet(io.BytesIO(raw))
    except Exception as err:  # pyarrow's errors are not one family
        raise ClrpipeError(
            f"{source}: not a readable Parquet file ({first_line(err)}); expected a complete "
            "Parquet table"
        ) from None
    if not isinstance(frame.index, pd.RangeIndex):
        frame = frame.reset_index()  # a saved index is data: keep it as a column
    return frame.reset_index(drop=True)
