"""Run the fuzz targets with atheris (coverage-guided libFuzzer), one process per target.

    python -m fuzz.run                       # every target, FUZZ_SECONDS (default 10) each
    python -m fuzz.run --seconds 120 weights # one target, two minutes
    python -m fuzz.run --list

Per target, under ``--out`` (default ``fuzz-out/``, gitignored): ``seeds/`` (written from the project's
own serializers at start), ``corpus/`` (what the fuzzer found worth keeping; reused by the next run),
``crash-*`` / ``timeout-*`` / ``oom-*`` files (inputs that broke the contract) and ``log.txt``.
A saved input replays with ``python -m fuzz.run --replay TARGET FILE...``.  The exit status is non-zero
when any target found something.
"""
from __future__ import annotations

import argparse
import atexit
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "src")]  # this checkout's package, whatever else is installed

from fuzz.common import Target  # noqa: E402
from fuzz.file_targets import SCRATCH_ENV, scratch_base  # noqa: E402  (of td3_drive only topics, before instrumenting)
#: instrumented for coverage: our code and the parsers it calls that are written in Python (safetensors,
#: cv2, Cyclone and numpy's core are native code that their own projects fuzz)
INSTRUMENT = ["td3_drive", "rosbags", "yaml", "fuzz"]
#: the address space a target may grow by (MB) beyond what it maps after setup: a 64 KB input that needs
#: more is an allocation out of proportion
ADDRESS_SPACE_MB = 2048
RSS_LIMIT_MB = 3072
TIMEOUT_S = 20


def target_names() -> list[str]:
    from fuzz.dds_targets import TYPES

    return ["image", "weights", "checkpoint", "replay", "params", "bag", *TYPES]


def make_target(name: str) -> Target:
    from fuzz import dds_targets, file_targets

    if name in dds_targets.TYPES:
        return dds_targets.DdsTarget(name)
    factories: dict[str, Callable] = {
        "image": file_targets.ImageTarget, "weights": file_targets.WeightsTarget,
        "checkpoint": file_targets.CheckpointTarget, "replay": file_targets.ReplayTarget,
        "params": file_targets.ParamsTarget, "bag": file_targets.BagTarget,
    }
    if name not in factories:
        raise SystemExit(f"unknown target {name!r}; targets: {', '.join(target_names())}")
    return factories[name]()


def instrument_generated_codecs() -> None:
    """rosbags generates each type's CDR reader at run time (exec): instrument those functions too."""
    import atheris

    from td3_drive.runtime import messages

    store = messages.typestore()
    for cached in getattr(store, "cache", {}).values():
        for attr in ("deserialize_cdr_le", "deserialize_cdr_be"):
            func = getattr(cached, attr, None)
            if func is not None and hasattr(func, "__code__"):
                atheris.instrument_func(func)


def fuzz_one(name: str, out: Path, libfuzzer_args: list[str]) -> None:
    """In this process: set the target up, write its seeds, hand it to libFuzzer (does not return)."""
    import atheris

    with atheris.instrument_imports(include=INSTRUMENT):
        from fuzz import common, file_targets
        from td3_drive.app import embedded  # noqa: F401  (the nodes, imported while instrumenting)
        from td3_drive.driving import observation  # noqa: F401
        import rosbags.image  # noqa: F401
        import rosbags.rosbag2  # noqa: F401

    logging.disable(logging.WARNING)  # the nodes log each drop; at thousands of inputs a second that is noise
    target = make_target(name)
    instrument_generated_codecs()
    atexit.register(file_targets.cleanup)
    seeds, corpus = out / "seeds", out / "corpus"
    seeds.mkdir(parents=True, exist_ok=True)
    corpus.mkdir(parents=True, exist_ok=True)
    for i, seed in enumerate(target.seeds()):
        (seeds / f"seed-{i:03d}").write_bytes(seed[: target.max_len])

    def test_one_input(data: bytes) -> None:
        common.run_one(target, data)

    extra = []
    tokens = getattr(target, "dictionary", ())
    if tokens:  # libFuzzer inserts these whole: a JSON or YAML token is rarely built bit by bit
        (out / "dictionary").write_text("".join(f'"{_escape(t)}"\n' for t in tokens))
        extra.append(f"-dict={out / 'dictionary'}")
    argv = [sys.argv[0], str(corpus), str(seeds), f"-max_len={target.max_len}", "-len_control=0", *extra, f"-rss_limit_mb={RSS_LIMIT_MB}",
            f"-timeout={TIMEOUT_S}", f"-artifact_prefix={out}/", "-print_final_stats=1", *libfuzzer_args]
    atheris.Setup(argv, test_one_input)
    cap = common.address_space_cap(ADDRESS_SPACE_MB)
    cap.__enter__()  # for the rest of the process: libFuzzer exits from Fuzz()
    atheris.Fuzz()


def _escape(token: bytes) -> str:
    """A libFuzzer dictionary entry: printable ASCII as is, everything else (and quote, backslash) as \\xNN."""
    return "".join(chr(b) if 32 <= b < 127 and b not in b'"\\' else f"\\x{b:02x}" for b in token)


def replay(name: str, files: list[Path]) -> int:
    """Run saved inputs through a target under the contract, uninstrumented; prints each outcome."""
    from fuzz import common, file_targets

    logging.disable(logging.WARNING)
    target = make_target(name)
    try:
        for path in files:
            print(f"{path}: {common.run_one(target, path.read_bytes())}", flush=True)
    finally:
        file_targets.cleanup()
    return 0


def _text(output: bytes | str | None) -> str:
    """What a timed-out subprocess had written (bytes even with text=True, or None)."""
    return output.decode(errors="replace") if isinstance(output, bytes) else output or ""


STAT = re.compile(r"stat::(number_of_executed_units|peak_rss_mb):\s*(\d+)")
COVERAGE = re.compile(r"#\d+\s+\w+\s+cov: (\d+) ft: (\d+)")


def summarize(name: str, log: str, code: int, out: Path) -> str:
    stats = dict(STAT.findall(log))
    coverage = COVERAGE.findall(log)
    cov, ft = coverage[-1] if coverage else ("?", "?")
    found = sorted(p.name for p in out.glob("*") if p.name.split("-")[0] in ("crash", "timeout", "oom", "leak"))
    status = "ok" if code == 0 and not found else f"FOUND {', '.join(found) or f'exit {code}'}"
    return (f"{name:18s} execs {stats.get('number_of_executed_units', '?'):>7s}  cov {cov:>5s}  ft {ft:>6s}  "
            f"rss {stats.get('peak_rss_mb', '?'):>5s} MB  {status}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("targets", nargs="*", help="target names (default: all)")
    parser.add_argument("--seconds", type=int, default=int(os.environ.get("FUZZ_SECONDS", "10")),
                        help="fuzzing time per target (env FUZZ_SECONDS; default 10)")
    parser.add_argument("--out", type=Path, default=ROOT / "fuzz-out", help="corpus, crashes and logs")
    parser.add_argument("--list", action="store_true", help="print the target names")
    parser.add_argument("--replay", action="store_true",
                        help="TARGET FILE...: run saved inputs through the target under the contract")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # the child process of one target
    args, libfuzzer_args = parser.parse_known_args(argv)
    if args.list:
        print("\n".join(target_names()))
        return 0
    if args.replay:
        if len(args.targets) < 2:
            raise SystemExit("--replay TARGET FILE...")
        return replay(args.targets[0], [Path(f) for f in args.targets[1:]])
    if args.one:
        fuzz_one(args.one, args.out / args.one, libfuzzer_args)
        return 0
    names = args.targets or target_names()
    unknown = set(names) - set(target_names())
    if unknown:
        raise SystemExit(f"unknown targets {sorted(unknown)}; targets: {', '.join(target_names())}")
    failed = 0
    for name in names:
        out = args.out / name
        out.mkdir(parents=True, exist_ok=True)
        start = time.monotonic()
        cmd = [sys.executable, "-m", "fuzz.run", "--one", name, "--out", str(args.out),
               f"-max_total_time={args.seconds}", *libfuzzer_args]
        with tempfile.TemporaryDirectory(prefix=f"td3_fuzz_{name}_", dir=scratch_base()) as scratch:
            # setup (imports, building nodes or a learner) comes on top of the fuzzing time
            env = {**os.environ, SCRATCH_ENV: scratch,
                   "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
            try:
                result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env,
                                        timeout=args.seconds + 600)
                log, code = result.stdout + result.stderr, result.returncode
            except subprocess.TimeoutExpired as exc:  # libFuzzer stops itself; this is setup or a wedged exit
                log, code = f"{_text(exc.stdout)}{_text(exc.stderr)}\nrunner: killed after {exc.timeout} s", -9
        (out / "log.txt").write_text(log)
        line = summarize(name, log, code, out) + f"  ({time.monotonic() - start:.0f} s)"
        failed += "FOUND" in line
        print(line, flush=True)
    print(f"{len(names) - failed}/{len(names)} targets kept the contract; output in {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
