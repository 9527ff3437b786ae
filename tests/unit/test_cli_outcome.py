"""The exit code `kubectl cellar ... --wait` returns, from the Pods of a finished Job (cli/runs.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest

from cli.runs import _outcome


def pod(exit_code: int, minute: int, message: str = "", reason: str = "Error") -> Any:
    finished = datetime(2026, 12, 6, 21, minute, tzinfo=UTC)
    terminated = SimpleNamespace(exit_code=exit_code, message=message, reason=reason, finished_at=finished)
    state = SimpleNamespace(terminated=terminated, running=None, waiting=None)
    return SimpleNamespace(
        metadata=SimpleNamespace(creation_timestamp=finished),
        status=SimpleNamespace(container_statuses=[SimpleNamespace(state=state)]),
    )


class Pods:
    """What `Cluster.call` answers to the list of a Job's Pods."""

    def __init__(self, *pods: Any) -> None:
        self.pods = list(pods)
        self.core = SimpleNamespace(list_namespaced_pod=None)

    def call(self, *args: Any, **kwargs: Any) -> Any:
        return SimpleNamespace(items=self.pods)


@pytest.mark.parametrize(
    ("pods", "code", "message"),
    [
        ([pod(1, 1, "ConnectionFailed: x"), pod(3, 2, "InvalidSpec: y")], 3, "InvalidSpec: y"),  # the last one
        ([pod(3, 2, "InvalidSpec: y"), pod(1, 1, "ConnectionFailed: x")], 3, "InvalidSpec: y"),  # by when it ended
        ([pod(143, 1, "Interrupted: z")], 143, "Interrupted: z"),
        ([pod(128, 1, "failed to start task", "StartError")], 1, "failed to start task exited 128 (StartError)"),
        ([pod(137, 1, "", "OOMKilled")], 1, "the container exited 137 (OOMKilled)"),
        ([], 1, "Job j failed before its container ran"),
    ],
)
def test_the_exit_code_is_the_last_containers_in_the_jobs_table(pods: list[Any], code: int, message: str) -> None:
    outcome = _outcome(Pods(*pods), "ns", "j", complete=False)
    assert (outcome.exit_code, outcome.message) == (code, message)


def test_a_complete_job_is_0() -> None:
    assert _outcome(Pods(pod(1, 1)), "ns", "j", complete=True).exit_code == 0
