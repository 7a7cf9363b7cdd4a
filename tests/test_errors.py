"""User-facing errors survive pickling (a protocol run's error crosses from its worker process)."""

from __future__ import annotations

import pickle

from vldistill.errors import ConfigError, DataError
from vldistill.training.interrupt import Interrupted


def test_errors_keep_class_message_and_fields_through_pickle() -> None:
    data = pickle.loads(pickle.dumps(DataError("a.json", "line 3", "missing field 'x'", "add it")))
    assert type(data) is DataError and str(data) == "a.json: line 3: missing field 'x'; fix: add it"
    assert (data.file, data.record, data.problem, data.fix, data.exit_code) == (
        "a.json",
        "line 3",
        "missing field 'x'",
        "add it",
        2,
    )
    config = pickle.loads(pickle.dumps(ConfigError("student.kind: no; fix: yes")))
    assert type(config) is ConfigError and config.lines() == ["student.kind: no; fix: yes"]
    stopped = pickle.loads(pickle.dumps(Interrupted(15, step=7, hint="continue with --resume")))
    assert type(stopped) is Interrupted and (stopped.step, stopped.exit_code) == (7, 143)
    assert str(stopped) == "interrupted at step 7 (SIGTERM); continue with --resume"
