"""The local compute backend: log streaming, exit status, cancel (the whole process group) and time limits."""

import sys
import threading
import time

import pytest

from dualtoken.launch.job import JobSpec, JobState, LaunchError
from dualtoken.launch.local import LocalBackend


def _python(code: str) -> tuple[str, ...]:
    return (sys.executable, "-u", "-c", code)


def test_a_job_streams_its_log_and_reports_success_or_its_exit_code(tmp_path):
    backend = LocalBackend(tmp_path / "logs")
    lines: list[str] = []
    job = backend.submit(JobSpec("ok", _python("import os; print('one'); print(os.environ['STAGE'])"), tmp_path,
                                 {"STAGE": "tokenize"}))
    result = backend.wait(job, lines.append)
    assert result.ok and result.exit_code == 0 and lines == ["one", "tokenize"]
    assert result.log_path.read_text() == "one\ntokenize\n"
    failed = backend.wait(backend.submit(JobSpec("bad", _python("import sys; print('boom'); sys.exit(3)"),
                                                  tmp_path)))
    assert failed.state is JobState.FAILED and failed.exit_code == 3 and "boom" in failed.log_path.read_text()


def _alive(pid: int) -> bool:
    """Running or sleeping; an unreaped zombie (no init to reap it in some containers) counts as gone."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_cancel_stops_the_job_and_everything_it_started(tmp_path):
    backend = LocalBackend(tmp_path / "logs", grace_s=5)
    script = ("import subprocess, sys, time; child = subprocess.Popen([sys.executable, '-c', 'import time; "
              "time.sleep(60)']); print(child.pid, flush=True); time.sleep(60)")
    job = backend.submit(JobSpec("long", _python(script), tmp_path))
    pids: list[str] = []

    def on_log(line: str) -> None:
        pids.append(line)
        threading.Thread(target=backend.cancel, args=(job,)).start()  # cancel once it is running

    t0 = time.monotonic()
    result = backend.wait(job, on_log)
    assert result.state is JobState.CANCELLED and result.exit_code is None and time.monotonic() - t0 < 30
    child = int(pids[0])
    for _ in range(50):  # the grandchild got the signal too (same process group); give it a moment to go
        if not _alive(child):
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"the job's child process {child} outlived the cancelled job")


def test_a_job_over_its_time_limit_is_stopped_and_says_so(tmp_path):
    backend = LocalBackend(tmp_path / "logs", grace_s=2)
    result = backend.wait(backend.submit(JobSpec("slow", _python("import time; time.sleep(60)"), tmp_path,
                                                 time_limit_s=1.0)))
    assert result.state is JobState.TIMED_OUT and result.seconds < 20


def test_errors_name_what_is_wrong(tmp_path):
    backend = LocalBackend(tmp_path / "logs")
    with pytest.raises(LaunchError, match="cannot start 'no-such-program'"):
        backend.submit(JobSpec("x", ("no-such-program",), tmp_path))
    with pytest.raises(LaunchError, match="no job 'nope'"):
        backend.wait("nope")
    with pytest.raises(ValueError, match="empty command"):
        JobSpec("x", (), tmp_path)


def test_cancel_reaches_children_that_outlive_the_first_process_and_waiting_late_loses_nothing(tmp_path):
    backend = LocalBackend(tmp_path / "logs", grace_s=2)
    script = ("import subprocess, sys; print('parent', flush=True); "
              "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)'])")  # the parent exits at once
    job = backend.submit(JobSpec("orphan", _python(script), tmp_path, time_limit_s=1.0))
    time.sleep(1.5)  # the limit passes before anyone waits: it counts from submission
    t0 = time.monotonic()
    lines: list[str] = []
    result = backend.wait(job, lines.append)
    assert result.state is JobState.TIMED_OUT and time.monotonic() - t0 < 10 and lines == ["parent"]
    assert backend.wait(job).state is JobState.TIMED_OUT  # waiting again is harmless
