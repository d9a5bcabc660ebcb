"""The Slurm backend against a real single-node Slurm on this machine: submit, stream, exit codes, cancel,
arrays, and the template's srun + torchrun c10d path."""

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from dualtoken.launch.config import SlurmSite, StageLaunch
from dualtoken.launch.job import JobSpec, JobState, LaunchError, run_job
from dualtoken.launch.slurm import SlurmBackend, interrupted, parse_job, parse_sacct, render

pytestmark = pytest.mark.integration
TEMPLATE = Path(__file__).resolve().parents[2] / "infra" / "slurm" / "stage.sbatch"
SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def _backend(tmp_path, **settings):
    """A backend as ``launch.slurm`` and a stage's ``launch.stages`` entry configure it."""
    job = {k: settings.pop(k) for k in list(settings) if k in StageLaunch.model_fields}
    site = SlurmSite(**{"template": str(TEMPLATE), "poll_s": 0.3, **settings})
    return SlurmBackend(site, StageLaunch(backend="slurm", **job), TEMPLATE.parent, tmp_path / "logs")


def _python(code):
    return (sys.executable, "-u", "-c", code)


def test_the_script_carries_the_resources_and_leaves_out_what_is_unset(tmp_path):
    backend = _backend(tmp_path, nodes=2, gpus_per_node=8, mem="64G", partition="gpu", setup=("module load cuda",))
    script = backend.script(JobSpec("tokenizer", ("dvc", "repro", "tokenizer"), tmp_path, {"A": "x y"}))
    assert "#SBATCH --nodes=2" in script and "#SBATCH --gpus-per-node=8" in script and "#SBATCH --mem=64G" in script
    assert "#SBATCH --partition=gpu" in script and "--account" not in script and "--qos" not in script
    assert "module load cuda" in script and "export A='x y'" in script
    assert "exec setsid dvc repro tokenizer) &" in script  # its own process group, for the signals it is sent
    assert "export DUALTOKEN_NPROC=$SLURM_GPUS_ON_NODE" in script  # one process per allocated GPU
    assert "--gpus-per-node" not in _backend(tmp_path).script(JobSpec("c", ("true",), tmp_path))
    with pytest.raises(LaunchError, match=r"unknown placeholder\(s\) \['nope'\]"):
        render("#SBATCH --x={{ nope }}", {"job_name": "x"})
    site = "#SBATCH --gres=gpu:{{ g }}\n#SBATCH --partition {{ p }}  # site\necho {{ p }}\n"
    assert render(site, {"g": "", "p": ""}) == "echo \n"  # an #SBATCH line with an unset value is left out
    assert render(site, {"g": "4", "p": "gpu"}).splitlines()[:2] == ["#SBATCH --gres=gpu:4",
                                                                     "#SBATCH --partition gpu  # site"]
    limited = _backend(tmp_path).script(JobSpec("t", ("true",), tmp_path, time_limit_s=90))
    assert "#SBATCH --time=2" in limited  # rounded up to whole minutes, never cut short


def test_a_job_with_a_time_limit_is_warned_before_it_and_may_requeue_itself(tmp_path):
    limited = _backend(tmp_path, signal_before_limit_s=120).script(JobSpec("t", ("true",), tmp_path,
                                                                          time_limit_s=3600))
    assert "#SBATCH --signal=B:USR1@120" in limited and "#SBATCH --requeue" in limited
    assert "#SBATCH --open-mode=append" in limited  # a requeued job's log goes on where it stopped
    site = _backend(tmp_path, sbatch=["--constraint=a100", "--exclusive"]).script(JobSpec("t", ("true",), tmp_path))
    assert "#SBATCH --constraint=a100\n#SBATCH --exclusive\n" in site
    with pytest.raises(ValueError, match="one sbatch option"):
        SlurmSite(sbatch=["constraint a100"])
    assert "#SBATCH --signal" not in _backend(tmp_path).script(JobSpec("t", ("true",), tmp_path))  # no limit
    assert interrupted("JobId=3 JobState=PREEMPTED ExitCode=0:15") == "PREEMPTED"
    assert interrupted("JobId=3 JobState=NODE_FAIL ExitCode=0:0") == "NODE_FAIL"
    assert interrupted("JobId=3 JobState=FAILED ExitCode=1:0") is None


def test_scontrol_states_and_exit_codes_map_to_job_states():
    assert parse_job("JobId=3 JobName=x JobState=COMPLETED Reason=None ExitCode=0:0") == (JobState.SUCCEEDED, 0)
    assert parse_job("JobId=3 JobState=FAILED Reason=NonZeroExitCode ExitCode=3:0") == (JobState.FAILED, 3)
    assert parse_job("JobId=3 JobState=CANCELLED ExitCode=0:15") == (JobState.CANCELLED, None)
    assert parse_job("JobId=3 JobState=TIMEOUT ExitCode=0:0")[0] is JobState.TIMED_OUT
    assert parse_job("JobId=3 JobState=SIGNALING ExitCode=0:0")[0] is JobState.RUNNING
    assert parse_job("JobId=3 JobState=SOMETHING_NEW")[0] is JobState.RUNNING  # not finished: poll again
    assert parse_sacct("FAILED|2:0\n") == (JobState.FAILED, 2)
    assert parse_sacct("CANCELLED by 0|0:15") == (JobState.CANCELLED, None)
    array = ("JobId=8 ArrayJobId=7 ArrayTaskId=1 JobState=COMPLETED ExitCode=0:0\n"
             "JobId=7 ArrayJobId=7 ArrayTaskId=0 JobState=FAILED ExitCode=4:0\n")
    assert parse_job(array) == (JobState.FAILED, 4)  # an array fails when one task fails
    assert parse_job(array + "JobId=7 ArrayTaskId=2-3 JobState=PENDING ExitCode=0:0")[0] is JobState.PENDING
    assert parse_sacct("COMPLETED|0:0\nTIMEOUT|0:15\n") == (JobState.TIMED_OUT, None)


def _accounted(job_id):
    """How Slurm's accounting (slurmdbd, what ``sacct`` reads once scontrol forgets a job) says the job ended."""
    for _ in range(100):
        out = subprocess.run(["sacct", "-j", job_id, "-n", "-P", "-X", "-o", "State,ExitCode"], capture_output=True,
                             text=True, check=True).stdout
        if out.strip() and not out.startswith(("RUNNING", "PENDING", "COMPLETING")):
            return parse_sacct(out)
        time.sleep(0.2)  # the controller hands finished jobs to slurmdbd asynchronously
    raise AssertionError(f"sacct has no end for job {job_id}")


def test_a_job_runs_on_slurm_streams_its_log_and_reports_its_exit_code(slurm_env, tmp_path):
    backend = _backend(tmp_path)
    lines = []
    job = backend.submit(JobSpec("ok", _python("import os; print('stage', os.environ['STAGE']); print(os.getcwd())"),
                                 tmp_path, {"STAGE": "tokenize"}))
    result = backend.wait(job, lines.append)
    assert result.ok and result.exit_code == 0, result.log_path.read_text()
    assert "stage tokenize" in lines and str(tmp_path.resolve()) in lines
    assert any(line.startswith(f"dualtoken: job {job} on ") for line in lines)
    failed = backend.wait(backend.submit(JobSpec("bad", _python("import sys; print('boom'); sys.exit(3)"), tmp_path)))
    assert failed.state is JobState.FAILED and failed.exit_code == 3 and "boom" in failed.log_path.read_text()
    # accounting, where the backend looks once scontrol has forgotten a job, tells the same ends
    assert _accounted(result.job_id) == (JobState.SUCCEEDED, 0) and _accounted(failed.job_id) == (JobState.FAILED, 3)
    with pytest.raises(LaunchError, match="sacct has no record"):
        backend.state("999999")


def test_a_cancelled_slurm_job_ends_cancelled(slurm_env, tmp_path):
    backend = _backend(tmp_path)
    job = backend.submit(JobSpec("long", _python("import time; print('started', flush=True); time.sleep(120)"),
                                 tmp_path))
    seen = []

    def on_log(line):
        seen.append(line)
        if line == "started":
            threading.Thread(target=backend.cancel, args=(job,)).start()

    result = backend.wait(job, on_log)
    assert result.state is JobState.CANCELLED and result.exit_code is None and "started" in seen
    assert _accounted(job) == (JobState.CANCELLED, None)
    with pytest.raises(LaunchError, match="no job 'nope'"):
        backend.wait("nope")


def test_an_array_job_gives_each_task_its_slice_and_fails_when_one_does(slurm_env, tmp_path):
    backend = _backend(tmp_path)
    code = ("import os, sys; i = int(os.environ['DUALTOKEN_ARRAY_INDEX']); "
            "print(f\"{i} of {os.environ['DUALTOKEN_ARRAY_SIZE']}\"); sys.exit(6 if i == int(sys.argv[1]) else 0)")
    spec = JobSpec("slices", (*_python(code), "-1"), tmp_path, array=3)
    assert "#SBATCH --array=0-2" in backend.script(spec)
    lines = []
    result = backend.wait(backend.submit(spec), lines.append)
    assert result.ok and {f"[task {i}] {i} of 3" for i in range(3)} <= set(lines)
    assert [p.name for p in result.log_paths] == [f"slices-{result.job_id}_{i}.log" for i in range(3)]
    failed = backend.wait(backend.submit(JobSpec("slices", (*_python(code), "2"), tmp_path, array=3)))
    assert failed.state is JobState.FAILED and failed.exit_code == 6


def test_a_stage_relaunched_under_torchrun_meets_at_the_scripts_rendezvous_through_srun(slurm_env, tmp_path):
    backend = _backend(tmp_path, cpus_per_task=2)
    lines = []
    result = backend.wait(backend.submit(JobSpec("ddp", (sys.executable, "-u", "-m", "ranks", "2"), SCRIPTS)),
                          lines.append)
    assert result.ok, result.log_tail()
    ranks = sorted(line for line in lines if line.startswith("rank "))
    # both ranks in one c10d group named after the job, started by an srun step, and a collective went through
    assert ranks == [f"rank {r}/2 run {result.job_id} step 0 sum 3" for r in range(2)], lines


def test_an_interrupted_caller_scancels_its_slurm_job(slurm_env, tmp_path):
    backend = _backend(tmp_path)

    def interrupt(line):
        if line == "started":
            raise KeyboardInterrupt  # what a cancelled Prefect run (SIGTERM) or a task timeout does to the flow

    with pytest.raises(KeyboardInterrupt):
        run_job(backend, JobSpec("long", _python("import time; print('started', flush=True); time.sleep(120)"),
                                 tmp_path), interrupt)
    (job_id,) = backend._logs
    assert backend.wait(job_id).state is JobState.CANCELLED


def test_a_training_stage_warned_before_its_time_limit_checkpoints_requeues_and_ends_as_if_never_stopped(
        slurm_env, tmp_path, monkeypatch):
    """Slurm's warning (SIGUSR1 to the batch shell, as --signal sends it) mid-training: the teacher writes a
    checkpoint and leaves the requeue marker, the job requeues itself, the rerun resumes, and the final loss is
    the uninterrupted run's."""
    import json

    from stages.cli import main as cli
    from workspace import SMALL_PARAMS, make_workspace, workspace_env

    ws = make_workspace(tmp_path / "ws", {**SMALL_PARAMS, "teacher.steps": 120, "teacher.runtime.log_every": 1,
                                          "teacher.runtime.checkpoint_every": 1000})
    monkeypatch.chdir(ws)
    assert cli(["curate"]) == 0
    reference = ["-S", "teacher.output_dir=models/reference", "-S", "teacher.work_dir=data/.work/reference",
                 "-S", "teacher.metrics_path=metrics/reference.json"]
    assert cli(["teacher", *reference]) == 0  # the same run, here and never stopped

    backend = _backend(tmp_path)
    job = backend.submit(JobSpec("teacher", (sys.executable, "-m", "stages", "teacher"), ws,
                                 {k: v for k, v in workspace_env().items() if k.startswith(("DVC", "MLFLOW", "GX"))}))
    warned = []

    def on_log(line):
        if "[teacher] step 10/120" in line and not warned:
            warned.append(subprocess.run(["scancel", "--signal=USR1", "--batch", job], check=True))

    result = backend.wait(job, on_log)
    log = result.log_path.read_text()
    assert result.ok and warned, log[-3000:]
    assert "stopped after step" in log and "requeued, it resumes from the checkpoint" in log, log[-3000:]
    assert "resumed from" in log and "(restart 1)" in log, log[-3000:]
    ours, theirs = (json.loads((ws / "metrics" / name).read_text()) for name in ("teacher.json", "reference.json"))
    assert ours["final_loss"] == theirs["final_loss"] and ours["steps"] == 120
