"""What a stage of a run wrote, as state.json records it: every file (bytes, modification
time, records for JSONL, sha256), found by comparing snapshots of the run directory taken
before and after the stage, and the check every start makes of them (selftrain/rundir.py)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

# files of the run directory that belong to no stage, and folders (vLLM's scratch, the
# experiment trackers' files)
_BOOKKEEPING = {"recipe.yaml", "state.json", "metrics.json", "log.txt"}
_NOT_OUTPUTS = {"vllm", "tracking"}


def is_report(rel: str) -> bool:
    """Whether ``rel`` is part of the run's report (report.md and its plots, *.png at the top),
    which a run's end and `selftrain report` rebuild from the other files: no stage's output."""
    return rel == "report.md" or ("/" not in rel and rel.endswith(".png"))


def snapshot(root: Path) -> dict[str, list[int]]:
    """Every stage-written file under ``root``: its [bytes, mtime in ns] (hidden files, the
    bookkeeping files, the report, vLLM's scratch folder and the trackers' files left out)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel_dir = Path(dirpath).relative_to(root)
        if rel_dir.parts[:1] and rel_dir.parts[0] in _NOT_OUTPUTS:
            continue
        for f in sorted(filenames):
            rel = (rel_dir / f).as_posix()
            if f.startswith(".") or rel in _BOOKKEEPING or is_report(rel):
                continue
            st = os.stat(Path(dirpath) / f)
            out[rel] = [st.st_size, st.st_mtime_ns]
    return out


def remove_stale_temporaries(root: Path) -> None:
    """Remove the temporary files of atomic writes a killed run left (``.NAME.*.tmp``); the
    lock says no other process is writing them."""
    for tmp in root.rglob(".*.tmp"):
        if tmp.is_file():
            tmp.unlink(missing_ok=True)


def describe(path: Path, st: list[int]) -> dict[str, Any]:
    """A stage output's record: bytes, mtime, sha256, and records for JSONL."""
    digest, lines = sha256(path)
    out: dict[str, Any] = {"bytes": st[0], "mtime_ns": st[1]}
    if path.suffix == ".jsonl":
        out["records"] = lines
    out["sha256"] = digest
    return out


def sha256(path: Path) -> tuple[str, int]:
    """A file's sha256 and its number of lines, read in 1 MiB blocks."""
    h, lines = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
            lines += block.count(b"\n")
    return h.hexdigest(), lines


def hashes(outputs: dict[str, dict[str, Any]]) -> dict[str, str]:
    return {rel: d["sha256"] for rel, d in outputs.items()}


def check(root: Path, outputs: dict[str, dict[str, Any]]) -> str | None:
    """What is wrong with a done stage's recorded outputs (None: nothing). The content is
    hashed only when the modification time changed."""
    for rel, want in outputs.items():
        path = root / rel
        if not path.is_file():
            return f"its output {rel} is missing"
        st = path.stat()
        if st.st_size != want["bytes"]:
            return (
                f"its output {rel} has {st.st_size} bytes, not the {want['bytes']} it had "
                "when the stage ended (cut short or changed)"
            )
        if st.st_mtime_ns != want["mtime_ns"] and sha256(path)[0] != want["sha256"]:
            return f"its output {rel} changed after the stage ended"
    return None
