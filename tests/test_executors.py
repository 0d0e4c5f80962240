"""Executors: parsing ``--executor``, rows in completion order, a failed task costs only its own rows."""

import pytest

from fissure.errors import ConfigError
from fissure.executors import ExecutorSpec, open_executor, parse_executor


def count_up(n: int):
    """A task: rows 0..n-1; n == 3 fails after its first row."""
    for i in range(n):
        if n == 3 and i == 1:
            raise RuntimeError(f"task {n} breaks")
        yield (n, i)


def test_parse_executor_accepts_the_documented_forms_and_round_trips():
    for text, spec in [("serial", ExecutorSpec("serial")), ("local", ExecutorSpec("local")),
                       ("local:3", ExecutorSpec("local", workers=3)), ("ray", ExecutorSpec("ray")),
                       ("ray://10.0.0.1:10001", ExecutorSpec("ray", address="ray://10.0.0.1:10001"))]:
        assert parse_executor(text) == spec
        assert parse_executor(str(spec)) == spec
    assert parse_executor(None) == ExecutorSpec("serial")


@pytest.mark.parametrize("bad", ["threads", "local:0", "local:x", "local:-1", "ray://host", "ray://:80",
                                 "ray://h:99999", "dask", ""])
def test_parse_executor_refuses_anything_else_in_one_line(bad):
    if bad == "":
        assert parse_executor(bad) == ExecutorSpec("serial")  # empty means the default
        return
    with pytest.raises(ConfigError) as info:
        parse_executor(bad)
    assert "\n" not in str(info.value)


def _outcome(spec: str):
    rows, failed = [], []
    with open_executor(spec) as executor:
        for event in executor.run(count_up, [2, 3, 1]):
            if event.error:
                failed.append((event.task, event.error))
            else:
                rows.append(event.row)
    return rows, failed


def test_serial_streams_rows_and_a_failed_task_stops_only_itself():
    rows, failed = _outcome("serial")
    # in process, rows arrive as they are made: the failed task's first row came before its failure
    assert rows == [(2, 0), (2, 1), (3, 0), (1, 0)]
    assert failed == [(3, "RuntimeError: task 3 breaks")]


@pytest.mark.slow
def test_local_pool_returns_the_same_rows_and_drops_only_the_failed_task():
    rows, failed = _outcome("local:2")
    serial_rows, serial_failed = _outcome("serial")
    # from a pool a task's rows come back together, or not at all when it fails
    assert sorted(rows) == sorted(r for r in serial_rows if r[0] != 3)
    assert failed == serial_failed
