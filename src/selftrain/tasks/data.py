"""Finding and reading benchmark files, with errors that name the file, line and field.

The data directory is never copied into the project: it is found through an explicit setting
(``--data-dir``), the ``SELFTRAIN_DATA_DIR`` environment variable, or a ``shared/data`` folder
beside the current directory or the source checkout. Hub datasets are read through
``datasets.load_dataset`` when a task is given a hub name.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "DataError",
    "data_dir",
    "field",
    "load_hub",
    "read_csv_rows",
    "read_json_array",
    "read_json_file",
    "read_jsonl_records",
    "read_lines",
    "read_text",
    "require_file",
]

ENV_VAR = "SELFTRAIN_DATA_DIR"


class DataError(ValueError):
    """A benchmark file is missing or malformed; the message names file, line and field."""


def _candidates() -> list[Path]:
    here = Path(__file__).resolve()
    roots = [Path.cwd(), *Path.cwd().parents[:2], *here.parents[2:5]]
    out: list[Path] = []
    for root in roots:
        for rel in ("shared/data", "../shared/data"):
            path = (root / rel).resolve()
            if path not in out:
                out.append(path)
    return out


def data_dir(explicit: str | Path | None = None) -> Path:
    """The benchmark data directory: ``explicit``, else ``$SELFTRAIN_DATA_DIR``, else the
    first ``shared/data`` found beside the current directory or the source checkout."""
    if explicit is not None:
        path = Path(explicit).expanduser()
        if not path.is_dir():
            raise DataError(f"data directory {path} does not exist (from --data-dir)")
        return path
    env = os.environ.get(ENV_VAR)
    if env:
        path = Path(env).expanduser()
        if not path.is_dir():
            raise DataError(f"data directory {path} does not exist (from ${ENV_VAR})")
        return path
    for path in _candidates():
        if (path / "SOURCES.md").is_file() or (path / "gsm8k").is_dir():
            return path
    raise DataError(
        f"no benchmark data directory found; pass --data-dir DIR or set ${ENV_VAR} "
        "(a folder holding gsm8k/, svamp/, mmlu/, ... as described in its SOURCES.md)"
    )


def require_file(root: Path, relative: str) -> Path:
    """``root / relative``, or a DataError saying where the file was expected."""
    path = root / relative
    if not path.is_file():
        raise DataError(
            f"{path}: file not found; expected {relative} under the data directory {root} "
            f"(set --data-dir or ${ENV_VAR})"
        )
    return path


def read_text(path: Path) -> str:
    """A data file's text; bytes that are not UTF-8 are a DataError naming the file and line."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataError(
            f"{path}:{line}: not UTF-8 text (byte {data[exc.start]:#04x}); "
            "save the file as UTF-8 or restore the original download"
        ) from None


def read_lines(path: Path) -> list[str]:
    """Lines of a text file without their newline characters."""
    return read_text(path).splitlines()


def read_jsonl_records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, record)`` for each non-blank line of a JSONL file."""
    for number, line in enumerate(read_lines(path), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{number}: invalid JSON: {exc.msg}") from exc
        if not isinstance(record, dict):
            raise DataError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
        yield number, record


def read_json_file(path: Path) -> Any:
    """A whole JSON document."""
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from exc


def read_json_array(path: Path, key: str | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(1-based index, record)`` for each object of a JSON array (or of ``doc[key]``).

    Some of our sources call themselves ``.json`` but are JSONL; those are read line by line.
    An empty file has no records.
    """
    stripped = read_text(path).lstrip()
    if not stripped:
        return
    if stripped.startswith("{") and key is None:
        yield from read_jsonl_records(path)
        return
    doc = read_json_file(path)
    if key is not None:
        if not isinstance(doc, dict) or key not in doc:
            raise DataError(f"{path}: expected a JSON object with the field {key!r}")
        doc = doc[key]
    if not isinstance(doc, list):
        raise DataError(f"{path}: expected a JSON array of records")
    for index, record in enumerate(doc, start=1):
        if not isinstance(record, dict):
            raise DataError(f"{path}: record {index}: expected a JSON object")
        yield index, record


def read_csv_rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    """``(line number, cells)`` for each CSV row (line numbers count physical lines)."""
    reader = csv.reader(io.StringIO(read_text(path), newline=""))
    try:
        for row in reader:
            yield reader.line_num, row
    except csv.Error as exc:
        raise DataError(f"{path}:{reader.line_num}: malformed CSV: {exc}") from exc


def field(
    record: dict[str, Any], name: str, where: str, kind: type | tuple[type, ...] = str
) -> Any:
    """``record[name]`` checked for presence and type; ``where`` is ``"file:line"``.

    Dotted names reach into nested objects (``"question.stem"``)."""
    value: Any = record
    for part in name.split("."):
        if not isinstance(value, dict) or part not in value:
            raise DataError(f"{where}: missing field {name!r}")
        value = value[part]
    if not isinstance(value, kind):
        expected = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise DataError(f"{where}: field {name!r} should be {expected}, got {type(value).__name__}")
    return value


def load_hub(name: str, config: str | None, split: str) -> list[dict[str, Any]]:
    """Rows of a Hugging Face hub dataset split (needs the hub or a local datasets cache)."""
    try:
        import datasets
    except ImportError as exc:  # pragma: no cover - datasets is a dependency
        raise DataError("reading from the hub needs the 'datasets' package") from exc
    try:
        ds = datasets.load_dataset(name, config, split=split)
    except Exception as exc:
        raise DataError(
            f"cannot load {name}{'/' + config if config else ''} split {split!r} from the "
            f"hub ({type(exc).__name__}: {exc}); use the local files with --data-dir instead"
        ) from exc
    return [dict(row) for row in ds]
