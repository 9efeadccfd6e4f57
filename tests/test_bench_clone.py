"""A clone of the repository alone runs its benchmark: nothing outside it is needed.

The clone is the working tree's tracked files (`git ls-files`, so a new
file must be added to git to count), copied into an empty temp dir: there
is nothing beside it, and no `../` path leads anywhere. There it runs
`make bench` with a tiny profile, this project's server against both
baselines of bench/peers, and checks that the report comes out.

It reuses this project's virtualenv (`PY=` the running python, and `make -o`
so that make takes the clone's `.venv` as built): building a fresh one needs
the network and minutes, and it is the benchmark that is tested here, not pip.
"""

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

BENCH_TIMEOUT_S = 80.0  # the tiny profile takes ~15 s on an idle 2-core machine
TINY_PROFILE = (
    "--servers project,threaded,aio --clients 6 --senders 2 --rate 5 --duration 1 "
    "--burst-clients 6 --repeat 1 --workers 1"
)


def clone(destination: Path) -> Path:
    """Copy the tracked files of the working tree to `destination`."""
    listing = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, timeout=10
    )
    for name in listing.stdout.decode().split("\0"):
        source = ROOT / name
        if name and source.is_file():  # a file deleted but not yet committed is skipped
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)
    return destination


def run_bounded(command: list[str], cwd: Path, timeout_s: float) -> subprocess.CompletedProcess:
    """Run `command`; past `timeout_s`, kill it and everything it started, and fail."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # only the clone's code
    process = subprocess.Popen(command, cwd=cwd, env=env, text=True, start_new_session=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        output, _ = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"{' '.join(command)} took over {timeout_s} s:\n{output[-3000:]}")
    return subprocess.CompletedProcess(command, process.returncode, output)


@pytest.mark.timeout(BENCH_TIMEOUT_S + 20)
def test_fresh_clone_runs_make_bench_to_its_report(tmp_path):
    """When the repository is cloned alone, `make bench` runs every server and prints the table."""
    repo = clone(tmp_path / "grpc-chat")
    command = ["make", "bench", f"PY={sys.executable}", "-o", ".venv/.installed-dev",
               f"ARGS={TINY_PROFILE}"]  # fmt: skip
    result = run_bounded(command, repo, BENCH_TIMEOUT_S)
    assert result.returncode == 0, result.stdout[-3000:]
    header = next((line for line in result.stdout.splitlines() if "project/threaded" in line), "")
    assert header.split() == ["project", "threaded", "aio", "project/threaded", "project/aio"]
    assert "deliveries/s" in result.stdout
    assert not (repo / ".venv").exists(), "make built a virtualenv in the clone"
