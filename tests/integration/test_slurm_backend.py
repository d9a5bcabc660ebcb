"""The Slurm backend against a real single-node Slurm on this machine: submit, stream, exit codes, cancel."""

import sys
import threading
from pathlib import Path

import pytest

from dualtoken.launch.job import JobSpec, JobState, LaunchError
from dualtoken.launch.slurm import SlurmBackend, SlurmSettings, parse_job, parse_sacct, render

pytestmark = pytest.mark.integration
TEMPLATE = Path(__file__).resolve().parents[2] / "infra" / "slurm" / "stage.sbatch"


def _backend(tmp_path, **settings):
    return SlurmBackend(SlurmSettings(template=TEMPLATE, poll_s=0.3, **settings), tmp_path / "logs")


def _python(code):
    return (sys.executable, "-u", "-c", code)


def test_the_script_carries_the_resources_and_leaves_out_what_is_unset(tmp_path):
    backend = _backend(tmp_path, nodes=2, gpus_per_node=8, mem="64G", partition="gpu", setup=("module load cuda",))
    script = backend.script(JobSpec("tokenizer", ("dvc", "repro", "tokenizer"), tmp_path, {"A": "x y"}))
    assert "#SBATCH --nodes=2" in script and "#SBATCH --gpus-per-node=8" in script and "#SBATCH --mem=64G" in script
    assert "#SBATCH --partition=gpu" in script and "--account" not in script and "--qos" not in script
    assert "module load cuda" in script and "export A='x y'" in script and script.rstrip().endswith(
        "dvc repro tokenizer")
    assert "--gpus-per-node" not in _backend(tmp_path).script(JobSpec("c", ("true",), tmp_path))
    with pytest.raises(LaunchError, match=r"unknown placeholder\(s\) \['nope'\]"):
        render("#SBATCH --x={{ nope }}", {"job_name": "x"})
    site = "#SBATCH --gres=gpu:{{ g }}\n#SBATCH --partition {{ p }}  # site\necho {{ p }}\n"
    assert render(site, {"g": "", "p": ""}) == "echo \n"  # an #SBATCH line with an unset value is left out
    assert render(site, {"g": "4", "p": "gpu"}).splitlines()[:2] == ["#SBATCH --gres=gpu:4",
                                                                     "#SBATCH --partition gpu  # site"]
    limited = _backend(tmp_path).script(JobSpec("t", ("true",), tmp_path, time_limit_s=90))
    assert "#SBATCH --time=2" in limited  # rounded up to whole minutes, never cut short


def test_scontrol_states_and_exit_codes_map_to_job_states():
    assert parse_job("JobId=3 JobName=x JobState=COMPLETED Reason=None ExitCode=0:0") == (JobState.SUCCEEDED, 0)
    assert parse_job("JobId=3 JobState=FAILED Reason=NonZeroExitCode ExitCode=3:0") == (JobState.FAILED, 3)
    assert parse_job("JobId=3 JobState=CANCELLED ExitCode=0:15") == (JobState.CANCELLED, None)
    assert parse_job("JobId=3 JobState=TIMEOUT ExitCode=0:0")[0] is JobState.TIMED_OUT
    assert parse_job("JobId=3 JobState=SIGNALING ExitCode=0:0")[0] is JobState.RUNNING
    assert parse_job("JobId=3 JobState=SOMETHING_NEW")[0] is JobState.RUNNING  # not finished: poll again
    assert parse_sacct("FAILED|2:0\n") == (JobState.FAILED, 2)
    assert parse_sacct("CANCELLED by 0|0:15") == (JobState.CANCELLED, None)


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
    with pytest.raises(LaunchError, match="no job 'nope'"):
        backend.wait("nope")
