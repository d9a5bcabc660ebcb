"""The local compute backend: log streaming, exit status, cancel (the whole process group), time limits, arrays;
and the torchrun command a job's stage relaunches itself with."""

import sys
import threading
import time

import pytest

from dualtoken.launch.job import JobSpec, JobState, LaunchError, combine, run_job
from dualtoken.launch.local import LocalBackend
from dualtoken.training.distributed import torchrun_command


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


def test_an_array_job_runs_every_task_with_its_index_and_fails_if_one_fails(tmp_path):
    backend = LocalBackend(tmp_path / "logs")
    code = ("import os, sys; i = int(os.environ['DUALTOKEN_ARRAY_INDEX']); "
            "print(f\"{i} of {os.environ['DUALTOKEN_ARRAY_SIZE']}\"); sys.exit(5 if i == int(sys.argv[1]) else 0)")
    lines: list[str] = []
    result = backend.wait(backend.submit(JobSpec("slices", (*_python(code), "-1"), tmp_path, array=3)), lines.append)
    assert result.ok and sorted(lines) == [f"[task {i}] {i} of 3" for i in range(3)]
    assert [p.read_text() for p in result.log_paths] == [f"{i} of 3\n" for i in range(3)]
    failed = backend.wait(backend.submit(JobSpec("slices", (*_python(code), "1"), tmp_path, array=3)))
    assert failed.state is JobState.FAILED and failed.exit_code == 5
    assert "--- " in failed.log_tail() and "1 of 3" in failed.log_tail()


def test_job_ends_combine_into_the_worst_one():
    ok, bad = (JobState.SUCCEEDED, 0), (JobState.FAILED, 3)
    assert combine([ok, ok]) == ok and combine([ok, bad, (JobState.FAILED, 4)]) == bad
    assert combine([ok, (JobState.CANCELLED, None), bad]) == bad
    assert combine([ok, (JobState.CANCELLED, None)]) == (JobState.CANCELLED, None)
    assert combine([bad, (JobState.RUNNING, None)])[0] is JobState.RUNNING  # not over while a task runs
    assert combine([ok, (JobState.PENDING, None)])[0] is JobState.PENDING


def test_an_interrupted_caller_cancels_its_job(tmp_path):
    backend = LocalBackend(tmp_path / "logs", grace_s=5)

    def interrupt(line: str) -> None:
        raise KeyboardInterrupt  # what a cancelled Prefect run or Ctrl-C does to the waiting flow

    with pytest.raises(KeyboardInterrupt):
        run_job(backend, JobSpec("long", _python("import time; print('up', flush=True); time.sleep(60)"), tmp_path),
                interrupt)
    (job_id,) = backend._jobs
    assert backend.wait(job_id).state is JobState.CANCELLED


def test_torchrun_command_meets_at_the_job_scripts_rendezvous():
    argv = ["--params", "p.yaml"]
    alone = torchrun_command("stages.mllm", 4, argv, {})
    assert alone[1:] == ["-m", "torch.distributed.run", "--nproc-per-node=4", "--standalone", "-m", "stages.mllm",
                         *argv]
    env = {"DUALTOKEN_NNODES": "3", "DUALTOKEN_RDZV_ENDPOINT": "node1:29400", "DUALTOKEN_RDZV_ID": "77",
           "DUALTOKEN_NODE_LAUNCHER": "srun --nodes=3 --ntasks-per-node=1"}
    cmd = torchrun_command("stages.mllm", 8, argv, env)
    assert cmd[:4] == ["srun", "--nodes=3", "--ntasks-per-node=1", alone[0]]
    assert {"--nnodes=3", "--rdzv-backend=c10d", "--rdzv-endpoint=node1:29400", "--rdzv-id=77",
            "--nproc-per-node=8"} <= set(cmd) and cmd[-4:] == ["-m", "stages.mllm", *argv]
    pods = torchrun_command("stages.mllm", 8, argv, {**env, "DUALTOKEN_NODE_LAUNCHER": ""})
    assert pods[0] == alone[0]  # each node (pod) runs the command itself
