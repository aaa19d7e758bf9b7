"""The answer cache: every paid answer is written to disk the moment it arrives.

One append-only JSONL file per model under the cache folder. A record is keyed by the sha256
of the canonical JSON of what decides the answer (model name, messages, sampling parameters,
sample index: :meth:`Teacher.signature`), never by the server's URL and never with the API key.
Each record is one ``os.write`` on a file opened for appending, followed by fsync: a killed run
loses at most the answers still in flight, and several runs may share a cache. A line that does
not parse (a write cut short by a kill) is skipped; the next run simply asks again.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

__all__ = ["TeacherCache", "cache_key", "default_cache_dir"]


def default_cache_dir() -> Path:
    """``$SELFTRAIN_CACHE_DIR``, else ``~/.cache/selftrain/teacher``."""
    env = os.environ.get("SELFTRAIN_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "selftrain" / "teacher"


def cache_key(signature: dict[str, Any]) -> str:
    """sha256 of the canonical JSON (sorted keys, no spaces) of ``signature``."""
    text = json.dumps(signature, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _file_name(namespace: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", namespace).strip("._") or "teacher"
    return f"{slug[:80]}.{hashlib.sha256(namespace.encode()).hexdigest()[:8]}.jsonl"


class TeacherCache:
    """Answers of one teacher (``namespace``: its identity), read once, appended per answer."""

    def __init__(self, folder: str | Path | None, namespace: str):
        self.folder = Path(folder).expanduser() if folder else default_cache_dir()
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / _file_name(namespace)
        self.skipped_lines = 0
        self._records: dict[str, dict[str, Any]] = {}
        self._load()
        self._fd: int | None = None

    def _load(self) -> None:
        if not self.path.exists():
            return
        for line in self.path.read_bytes().split(b"\n"):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                self._records[record["key"]] = record
            except (ValueError, KeyError, TypeError):
                self.skipped_lines += 1

    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, key: str) -> bool:
        return key in self._records

    def get(self, key: str) -> dict[str, Any] | None:
        return self._records.get(key)

    def put(self, key: str, record: dict[str, Any]) -> None:
        """Append ``record`` (plus its key) as one line, flushed and fsynced."""
        record = {"key": key, **record}
        data = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            if os.fstat(self._fd).st_size and not self._ends_with_newline():
                os.write(self._fd, b"\n")  # a torn line of a killed writer stays on its own
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]
        os.fsync(self._fd)
        self._records[key] = record

    def _ends_with_newline(self) -> bool:
        with open(self.path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            return f.read(1) == b"\n"

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> TeacherCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
