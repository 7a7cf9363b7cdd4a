"""User-facing errors: each one renders as a single line and makes the CLI exit with status 2.

A user who feeds a bad file wants to know which file, which record, what is wrong and what to do,
never a traceback. Every error raised for bad input derives from :class:`VldistillError`.
"""

from __future__ import annotations

from pathlib import Path


class VldistillError(Exception):
    """An error caused by the user's input or configuration (CLI exit status 2, one line)."""

    exit_code = 2

    def lines(self) -> list[str]:
        """The lines the CLI prints, each after ``error: ``: one per defect (usually one)."""
        return [str(self)]

    def __reduce__(self) -> tuple:
        """Pickle as class, message and attributes: a run's error crosses from a protocol worker process
        whatever its constructor takes (``DataError``'s four fields, ``Interrupted``'s step and signal)."""
        return _restore, (type(self), str(self), dict(self.__dict__))


def _restore(cls: type[VldistillError], message: str, attributes: dict) -> VldistillError:
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    error.__dict__.update(attributes)
    return error


class DataError(VldistillError):
    """A defect in a data file: names the file, the record, the problem and the fix.

    >>> str(DataError("a.json", "line 3", "missing field 'sentence'", "add the field"))
    "a.json: line 3: missing field 'sentence'; fix: add the field"
    """

    def __init__(self, file: str | Path, record: str | None, problem: str, fix: str) -> None:
        self.file = str(file)
        self.record = record
        self.problem = problem
        self.fix = fix
        where = f"{self.file}: {record}" if record else self.file
        super().__init__(f"{where}: {problem}; fix: {fix}")


class ConfigError(VldistillError):
    """A defect in a configuration file or option: names the key and the fix."""
