"""scripts/gpu_train's chain of commands, run for real as subprocesses standing in for seg-train and seg-prune
(the whole path on a GPU stand-in is tests/test_gpu_dry_run.py, opt-in)."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import signal
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def load_gpu_train():
    loader = importlib.machinery.SourceFileLoader("gpu_train", str(REPO / "scripts" / "gpu_train"))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader("gpu_train", loader))
    loader.exec_module(module)
    return module


gpu_train = load_gpu_train()


def fake_venv(root: Path, scripts: dict[str, str]) -> Path:
    """A venv whose console scripts are these shell scripts ($1 $2: --out PATH)."""
    for name, body in scripts.items():
        path = root / "bin" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"#!/bin/sh\n{body}\n")
        path.chmod(0o755)
    return root


def run_chain(commands: list[list[str]], venv: Path, seconds: float, log: Path) -> str:
    """gpu_train's chain with `seconds` for the commands (the packing's share kept back), and its log."""
    with open(log, "w") as handle:
        gpu_train.run_chain(commands, venv, time.monotonic() + gpu_train.PACK_SECONDS + seconds, handle)
    return log.read_text()


def test_run_splits_the_commands_at_each_double_dash():
    args = gpu_train.parse_args(["run", "--budget", "300", "out", "--", "seg-prune", "--model", "a.json", "--out",
                                 "runs/a", "--", "seg-prune", "--model", "runs/a.json", "--ratio", "0"])
    assert args.commands == [["seg-prune", "--model", "a.json", "--out", "runs/a"],
                             ["seg-prune", "--model", "runs/a.json", "--ratio", "0"]]
    with pytest.raises(SystemExit, match="seg-train or seg-prune commands"):
        gpu_train.parse_args(["run", "out", "--", "seg-train", "--", "rm", "-rf", "runs"])
    with pytest.raises(SystemExit, match="seg-train or seg-prune commands"):
        gpu_train.parse_args(["run", "out", "--", "seg-train", "--"])


def test_a_chain_runs_in_turn_and_stops_at_the_first_command_that_fails(tmp_path):
    venv = fake_venv(tmp_path / "venv", {
        "seg-first": 'mkdir -p "$2" && echo one > "$2/first.txt"',
        "seg-second": 'test -f "$4/first.txt" && mkdir -p "$2" && echo two > "$2/second.txt" && exit 3',
        "seg-third": 'mkdir -p "$2" && echo three > "$2/third.txt"'})
    first, second, third = (tmp_path / name for name in ("a", "b", "c"))
    commands = [["seg-first", "--out", str(first)], ["seg-second", "--out", str(second), "--after", str(first)],
                ["seg-third", "--out", str(third)]]
    started = time.time() - 1
    log = run_chain(commands, venv, seconds=120, log=tmp_path / "gpu_train.log")
    assert "command 1: exit 0" in log and "command 2: exit 3" in log, log
    assert "commands 3 to 3 not run" in log and not third.exists()
    # what every command wrote comes back, the failed one's too
    assert {p.name for p in gpu_train.outputs_of(commands, started)} == {"first.txt", "second.txt"}


def test_a_command_still_running_at_the_budget_is_interrupted_and_ends_the_chain(tmp_path):
    """Interrupted by Ctrl-C (it says so), not killed, also when this test runs with SIGINT ignored, as a job
    started in the background does."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        interrupted_at_the_budget(tmp_path)
    finally:
        signal.signal(signal.SIGINT, previous)


def interrupted_at_the_budget(tmp_path: Path) -> None:
    venv = fake_venv(tmp_path / "venv", {
        "seg-slow": 'trap "echo interrupted; exit 130" INT; while true; do sleep 0.1; done',
        "seg-next": 'mkdir -p "$2" && echo next > "$2/next.txt"'})
    log = run_chain([["seg-slow"], ["seg-next", "--out", str(tmp_path / "next")]], venv, seconds=2,
                    log=tmp_path / "gpu_train.log")
    assert "command 1: stopped at the budget" in log and "interrupted" in log, log
    assert "commands 2 to 2 not run" in log and not (tmp_path / "next").exists()
