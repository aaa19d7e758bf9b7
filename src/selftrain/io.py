"""Run-directory file helpers: atomic writes, append-only JSONL, readable load errors."""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

# Fault injection for the crash test (tests/e2e/test_crash.py). SELFTRAIN_CRASH_AT=N: the N-th
# file write of this process (an atomic write, or an append of JSONL records) writes half of
# its text, then the process is killed with SIGKILL, as a power cut or the OOM killer ends it.
# SELFTRAIN_CRASH_AT=count:PATH writes the number of file writes to PATH at exit.
_CRASH_AT = os.environ.get("SELFTRAIN_CRASH_AT", "")
_writes = 0


def _write_point(f: IO[Any], data: str | bytes) -> None:
    global _writes
    _writes += 1
    if _CRASH_AT.isdigit() and _writes == int(_CRASH_AT):
        import signal

        f.write(data[: len(data) // 2])
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)


if _CRASH_AT.startswith("count:"):
    import atexit

    atexit.register(lambda: Path(_CRASH_AT[6:]).write_text(str(_writes)))


def _file_mode() -> int:
    """The mode ``open`` gives a new file: 0666 less the umask (0644 with the usual 022)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def _naming(e: OSError, path: Path) -> OSError:
    """``e`` with ``path`` as its file name (its errno kept): a full disk or a read-only folder
    then names the file being written, not a temporary one or none."""
    return OSError(e.errno, e.strerror or str(e), str(path))


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` so a reader never sees a half-written file. The file gets
    the mode an ordinary ``open`` would give it; an OSError names ``path``."""
    _write_atomic(path, text)


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """:func:`write_text_atomic` for bytes (a PNG)."""
    _write_atomic(path, data)


def _write_atomic(path: str | Path, data: str | bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a folder; give a file name", str(path))
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        binary = isinstance(data, bytes)
        with os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), _file_mode())  # mkstemp makes it 0600
            _write_point(f, data)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and e.filename != str(path):
            raise _naming(e, path) from e
        raise


def write_json_atomic(path: str | Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def _read_utf8(path: Path) -> str:
    """The text of ``path``; bytes that are not UTF-8 are a ValueError naming the file and
    line."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ValueError(
            f"{path}: line {line}: not UTF-8 text (byte {data[e.start]:#04x}); the file is "
            "damaged or not one selftrain wrote: restore it, or delete it to redo that step"
        ) from None


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(_read_utf8(path))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: line {e.lineno}: invalid JSON: {e.msg}") from e


def write_jsonl_atomic(path: str | Path, records: Iterable[dict]) -> None:
    """Replace a JSONL file's content in one atomic step."""
    write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def read_jsonl(path: str | Path) -> list[dict]:
    """Read a JSONL file. A torn last line (a killed writer) is dropped; any other bad line
    raises an error naming the file and line."""
    path = Path(path)
    if not path.exists():
        return []
    lines = _read_utf8(path).split("\n")
    out = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as e:
            if i == len(lines):  # the last line has no newline: an append cut short
                break
            raise ValueError(f"{path}: line {i}: invalid JSON: {e.msg}") from e
    return out


class JsonlWriter:
    """Append records to a JSONL file, one flushed line each, so a kill loses at most the
    record being written. A torn last line left by an earlier kill is cut off first."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            data = self.path.read_bytes()
            if data and not data.endswith(b"\n"):
                keep = data.rfind(b"\n") + 1
                try:  # a complete record that only lacks its newline is kept
                    json.loads(data[keep:])
                    with open(self.path, "ab") as f:
                        f.write(b"\n")
                except ValueError:
                    with open(self.path, "r+b") as f:
                        f.truncate(keep)
        self._f = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def write(self, record: dict) -> None:
        try:
            line = json.dumps(record, ensure_ascii=False) + "\n"
            _write_point(self._f, line)
            self._f.write(line)
            self._f.flush()
        except OSError as e:  # a full disk: the error names the file
            raise _naming(e, self.path) from e

    def write_many(self, records: Iterable[dict]) -> None:
        try:
            text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
            _write_point(self._f, text)
            self._f.write(text)
            self._f.flush()
            os.fsync(self._f.fileno())
        except OSError as e:
            raise _naming(e, self.path) from e

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
