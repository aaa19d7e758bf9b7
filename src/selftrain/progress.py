"""Progress bars with ETA (rich) and a run log, shared by every long stage."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True)
log = logging.getLogger("selftrain")


class Bar:
    """One progress bar: ``advance(n)`` and ``note(text)`` for the metrics shown beside it."""

    def __init__(self, progress: Progress | None, task_id: int | None):
        self._p, self._id = progress, task_id

    def advance(self, n: float = 1) -> None:
        if self._p is not None:
            self._p.advance(self._id, n)

    def note(self, text: str) -> None:
        if self._p is not None:
            self._p.update(self._id, note=text)


@contextlib.contextmanager
def bar(description: str, total: float, enabled: bool = True) -> Iterator[Bar]:
    if not enabled:
        yield Bar(None, None)
        return
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[note]}"),
        console=console,
        transient=False,
    )
    with progress:
        yield Bar(progress, progress.add_task(description, total=total, note=""))


def setup_logging(logfile=None, verbose: bool = False, quiet: bool = False) -> None:
    """Log to stderr through rich and, when given, to ``logfile`` (appended). ``quiet`` (the
    processes other than rank 0 of a multi-process run): warnings and errors only."""
    from rich.logging import RichHandler

    root = logging.getLogger("selftrain")
    root.setLevel(logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO)
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(RichHandler(console=console, show_path=False, markup=False))
    if logfile is not None:
        fh = logging.FileHandler(logfile, encoding="utf-8")
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        root.addHandler(fh)
    root.propagate = False
