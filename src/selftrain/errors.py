"""One error path: every failure a user can fix is one line (``error: ...``) naming the file,
key, line or field, with a hint, and exit status 2; anything else is an internal error, with
its traceback only under ``--debug`` (or ``SELFTRAIN_DEBUG=1``)."""

from __future__ import annotations

import errno

# selftrain's own error classes, each raised with a message that says what to do; matched by
# name so this module imports none of their (heavy) modules
_USER_ERRORS = {"RunDirError", "ModelLoadError", "RuntimeSetupError", "TeacherError"}

USER_ERROR = 2  # exit status of a failure the user can fix
INTERNAL_ERROR = 1
INTERRUPTED = 130

_OS_HINTS = {
    errno.ENOSPC: "the disk is full: free some space, then rerun the same command (it resumes "
    "where it stopped)",
    errno.EDQUOT: "the disk quota is used up: free some space, then rerun the same command",
    errno.EACCES: "no permission: check the file's and its folder's permissions",
    errno.EPERM: "not permitted: check the file's and its folder's permissions",
    errno.EROFS: "a read-only filesystem: write somewhere else (--run-dir, --out)",
    errno.ENOENT: "no such file or folder: check the path",
    errno.EISDIR: "a folder where a file was expected: check the path",
    errno.ENOTDIR: "a file where a folder was expected: check the path",
    errno.EMFILE: "too many open files: raise the limit (ulimit -n)",
}


def is_user_error(e: BaseException) -> bool:
    """Whether ``e`` is a failure the user can fix: bad input (a ValueError, as every
    validation error here is), the filesystem (an OSError), or one of selftrain's errors."""
    if isinstance(e, (ValueError, OSError)):
        return True
    return any(
        c.__name__ in _USER_ERRORS and c.__module__.startswith("selftrain") for c in type(e).__mro__
    )


def describe(e: BaseException) -> tuple[str, int]:
    """The one line shown for ``e`` (after ``error: ``) and the exit status."""
    if isinstance(e, KeyboardInterrupt):
        return "interrupted; rerun the same command to resume where it stopped", INTERRUPTED
    if isinstance(e, OSError) and e.strerror:
        return os_message(e), USER_ERROR
    text = one_line(str(e)) or type(e).__name__
    if is_user_error(e):
        return text, USER_ERROR
    return (
        f"internal error: {type(e).__name__}: {text.splitlines()[0] if text else ''} (rerun "
        "with --debug for the traceback, and please report it)",
        INTERNAL_ERROR,
    )


def yaml_problem(e: Exception) -> str:
    """A YAML parser's error in one line: where, then what (``line 2, column 1: expected ','
    or ']', but got '<stream end>'``)."""
    mark, problem = getattr(e, "problem_mark", None), getattr(e, "problem", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return where + (problem or one_line(str(e)))


def one_line(text: str) -> str:
    """``text`` on one line (a YAML parser's or pydantic's message spans several)."""
    return " ".join(text.split())


def os_message(e: OSError) -> str:
    """``PATH: what went wrong (hint)`` for a filesystem error."""
    where = f"{e.filename}: " if e.filename else ""
    if e.filename2:
        where = f"{e.filename} -> {e.filename2}: "
    hint = _OS_HINTS.get(e.errno or 0)
    return f"{where}{e.strerror}" + (f" ({hint})" if hint else "")
