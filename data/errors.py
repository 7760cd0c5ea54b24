"""The one error type for bad user input: its message is a single line naming the file and the problem."""

from __future__ import annotations

from pathlib import Path


class InputError(Exception):
    """Bad user input (a file, a CSV, an image). ``str(err)`` is one line: ``<file>: <problem>``."""

    def __init__(self, path: str | Path | None, problem: str):
        self.path = None if path is None else Path(path)
        self.problem = " ".join(str(problem).split())
        super().__init__(self.problem if path is None else f"{path}: {self.problem}")
