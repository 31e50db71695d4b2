"""The fuzz targets (fuzz/, issue 29) in CI: each runs briefly, every kept finding replays clean.

``make fuzz`` (``python -m fuzz.run``) is the real, coverage-guided fuzzing with atheris; here each
target gets its seeds (real messages and files the project writes), the inputs kept from findings
(test/fuzz_regressions/<target>/<name>.<outcome>) and half a second of random mutations of them, under the
contract: a clear error of the project's own type or a counted drop, nothing else, with the address
space capped so that an allocation out of proportion fails the test instead of the machine.
"""
from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the fuzz/ folder sits beside src/, outside the package

from fuzz import common, file_targets, run  # noqa: E402

REGRESSIONS = Path(__file__).parent / "fuzz_regressions"
SECONDS = 0.5  # per target: 17 targets in well under a minute with the setup
ADDRESS_SPACE_MB = 2048


@pytest.fixture(scope="module", autouse=True)
def _quiet_and_clean():
    logging.disable(logging.WARNING)  # each drop is logged by its node: thousands here
    yield
    logging.disable(logging.NOTSET)
    file_targets.cleanup()


_TARGETS: dict = {}


def target(name: str):
    if name not in _TARGETS:
        _TARGETS[name] = run.make_target(name)
    return _TARGETS[name]


def kept(name: str) -> list[Path]:
    return sorted((REGRESSIONS / name).glob("*")) if (REGRESSIONS / name).is_dir() else []


def test_every_target_is_listed_and_every_kept_input_has_a_target():
    names = run.target_names()
    assert len(names) == len(set(names)) >= 17
    assert {p.name for p in REGRESSIONS.iterdir() if p.is_dir()} <= set(names)


@pytest.mark.parametrize("name", run.target_names())
def test_target_keeps_its_contract(name: str):
    t = target(name)
    with common.address_space_cap(ADDRESS_SPACE_MB):
        result = common.smoke(t, SECONDS, seed=29, extra=[p.read_bytes() for p in kept(name)])
    assert result.executed > len(result.seeds) > 0
    # the seeds are real messages and files: a target that refuses them all tests nothing past its first check
    assert "ok" in result.seeds, (name, result.seeds)


@pytest.mark.parametrize("path", [p for name in run.target_names() for p in kept(name)],
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_kept_finding_ends_as_expected(path: Path):
    """Each input a fuzzer (or a reading of a target's code) found breaking the contract, after its fix:
    the file's suffix names the outcome now expected ('ok' or the clear error)."""
    with common.address_space_cap(ADDRESS_SPACE_MB):
        outcome = common.run_one(target(path.parent.name), path.read_bytes())
    assert outcome == path.suffix.lstrip(".")


def test_make_fuzz_runs_a_target_with_atheris(tmp_path: Path):
    """The coverage-guided path itself: one target for two seconds through the runner `make fuzz` uses."""
    pytest.importorskip("atheris")
    result = subprocess.run([sys.executable, "-m", "fuzz.run", "--seconds", "2", "--out", str(tmp_path), "image"],
                            cwd=ROOT, capture_output=True, text=True, timeout=900)  # ~10 s idle
    assert result.returncode == 0, result.stdout + result.stderr
    log = (tmp_path / "image" / "log.txt").read_text()
    assert "cov:" in log and "DONE" in log, log[-2000:]
    assert any((tmp_path / "image" / "seeds").iterdir())
    assert "1/1 targets kept the contract" in result.stdout
