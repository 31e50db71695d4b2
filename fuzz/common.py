"""What every fuzz target shares: the contract, an address-space cap, and a small mutator for CI.

A target is a callable taking one input (bytes) plus the exception types that count as "a clear
error" for it (the project's own: ``InvalidMessage``, ``WeightsRejected``, ``CheckpointError``, ...).
A counted drop is a normal return.  Anything else escaping the call, a broken output check
(:class:`ContractViolation`), a hang or an allocation beyond the cap is a finding.
"""
from __future__ import annotations

import contextlib
import random
import resource
import struct
import time
from dataclasses import dataclass
from typing import Iterator, Protocol


class ContractViolation(AssertionError):
    """An output check failed: the target returned, but with something it must never produce."""


class Target(Protocol):
    name: str
    #: exception types that are "a clear error" (the input was refused, by our own code)
    expected: tuple[type[BaseException], ...]
    #: longest input the fuzzer generates (libFuzzer -max_len)
    max_len: int

    def seeds(self) -> list[bytes]: ...

    def __call__(self, data: bytes) -> None: ...


def run_one(target: Target, data: bytes) -> str:
    """One input under the contract: 'ok', or the name of the clear error; anything else propagates."""
    try:
        target(data)
    except target.expected as exc:
        return type(exc).__name__
    return "ok"


def _vm_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize in /proc/self/status")


@contextlib.contextmanager
def address_space_cap(extra_mb: int) -> Iterator[None]:
    """Cap this process's address space at what it maps now plus ``extra_mb``: an allocation out of
    proportion to an input becomes a MemoryError (a finding) instead of paging a shared machine to death.
    RSS limits (libFuzzer's -rss_limit_mb) miss calloc'd or mmapped pages never touched; this does not."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = _vm_bytes() + extra_mb * 1024 * 1024
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


# ----------------------------------------------------------------------------- a mutator for CI
#: values that often sit at the edge of a length or count check (little-endian uint32 / int32)
INTERESTING_32 = (0, 1, 0x7F, 0x80, 0xFF, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 84, 336)


def mutate(data: bytes, rng: random.Random, max_len: int) -> bytes:
    """One to four libFuzzer-style edits: flip, set, insert, erase, truncate, an interesting uint32."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(6)
        if op == 0 and buf:
            buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
        elif op == 1 and buf:
            buf[rng.randrange(len(buf))] = rng.randrange(256)
        elif op == 2:
            at = rng.randint(0, len(buf))
            buf[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif op == 3 and buf:
            at = rng.randrange(len(buf))
            del buf[at:at + rng.randint(1, 8)]
        elif op == 4 and buf:
            del buf[rng.randint(0, len(buf)):]
        elif len(buf) >= 4:
            at = rng.randrange(0, len(buf) - 3) & ~3  # CDR lengths sit on 4-byte boundaries
            buf[at:at + 4] = struct.pack("<I", rng.choice(INTERESTING_32))
    return bytes(buf[:max_len])


@dataclass
class Smoke:
    """What :func:`smoke` ran: inputs executed, how they ended, and how each seed ended."""

    executed: int
    outcomes: dict[str, int]
    seeds: list[str]


def smoke(target: Target, seconds: float, seed: int = 0, extra: list[bytes] = ()) -> Smoke:
    """Run ``target`` on its seeds, on ``extra`` (kept regression inputs), then on random mutations of
    them for ``seconds``, under the contract.  Not coverage-guided: CI's cheap check that every target
    still runs and that no kept finding came back; ``python -m fuzz.run`` is the real fuzzing."""
    rng = random.Random(seed)
    seeds = [s[: target.max_len] for s in target.seeds()]
    pool = seeds + list(extra)
    outcomes: dict[str, int] = {}

    def one(data: bytes) -> str:
        outcome = run_one(target, data)
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        return outcome

    ended = [one(data) for data in pool][: len(seeds)]
    deadline = time.monotonic() + seconds
    executed = len(pool)
    while time.monotonic() < deadline:
        one(mutate(rng.choice(pool), rng, target.max_len))
        executed += 1
    return Smoke(executed, outcomes, ended)



class Consume:
    """Structured values read off the front of a fuzz input (what atheris' FuzzedDataProvider does, in
    plain Python so a kept input replays the same without atheris).  Reads past the end give zeros."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk.ljust(n, b"\0")

    def u8(self) -> int:
        return self.take(1)[0]

    def u32(self) -> int:
        return struct.unpack("<I", self.take(4))[0]

    def rest(self) -> bytes:
        chunk, self.pos = self.data[self.pos:], len(self.data)
        return chunk
