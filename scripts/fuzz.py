"""Fuzz one decoder of peer input for a time budget: ``scripts/fuzz.py TARGET --minutes M``.

TARGET is a name from ``scripts/fuzz_targets.py`` (``--list`` prints them): ``frames``,
``rpc``, ``unpack``, ``messages``, ``manifest``, ``advert``, ``receipt``, ``job_spec``,
``job_result``, ``pt2``, ``safetensors``, or ``message:<type>`` for one message schema.
Prints one JSON object: target, minutes, examples, crashes (each with its exception and
the minimal failing input in hex, as hypothesis shrank it). TARGET may be a pattern
(``'message:*'``): each matching target runs for M minutes, one JSON line each.

Why hypothesis and not atheris: the same structure-aware strategies as the suite's
``tests/test_fuzz.py`` (golden encodings mutated, wrong-typed fields, re-signed envelopes,
odd zip members), with shrinking to a minimal input; and the hot decoders (msgspec,
msgpack, zlib, json's scanner) are C extensions that atheris's Python coverage cannot see,
so coverage guidance would add little. Hypothesis runs in rounds of fresh random seeds
until the budget is spent.

Besides exceptions other than the documented ones, two more things count as crashes:
an example that runs longer than ``--hang`` seconds (SIGALRM) and a MemoryError under
the ``--memory`` cap on the address space (RLIMIT_AS), so that a decoder that allocates
wildly fails instead of swapping.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import random
import resource
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, Phase, given, seed, settings

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fuzz_targets  # noqa: E402

ROUND_EXAMPLES = 200  # small rounds: generation goes on after the deadline until a round ends


class Hang(Exception):
    """An example ran past the hang limit."""


def _alarm(signum: int, frame: Any) -> None:
    raise Hang("example ran past the hang limit")


def fuzz(target: fuzz_targets.Target, minutes: float, hang_s: int) -> dict[str, Any]:
    started = time.monotonic()
    deadline = started + minutes * 60
    examples = 0
    crashes: dict[str, dict[str, str]] = {}  # by exception type and place: one entry per bug

    def one(data: bytes) -> None:
        nonlocal examples
        examples += 1
        signal.alarm(hang_s)
        try:
            target.run(data)
        finally:
            signal.alarm(0)

    failing: list[tuple[bytes, BaseException]] = []  # this round's failing examples

    def recording(data: bytes) -> None:
        if time.monotonic() > deadline and not failing:
            return  # out of time: let this round finish quickly
        try:
            one(data)
        except Exception as exc:
            failing.append((data, exc))
            raise

    while time.monotonic() < deadline:
        failing.clear()
        run = settings(max_examples=ROUND_EXAMPLES, deadline=None, database=None,
                       suppress_health_check=list(HealthCheck),
                       phases=[Phase.generate, Phase.shrink])(given(target.inputs)(recording))
        try:
            seed(random.getrandbits(64))(run)()
        except Exception:
            if not failing:
                raise  # not the decoder's fault: a strategy or hypothesis itself
            data, exc = failing[-1]  # hypothesis replays the shrunk example last
            where = traceback.extract_tb(exc.__traceback__)[-1]
            key = f"{type(exc).__name__} at {Path(where.filename).name}:{where.lineno}"
            if key not in crashes or len(data) < len(crashes[key]["input_hex"]) // 2:
                crashes[key] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}",
                                "where": key, "input_hex": data.hex()}
    elapsed = (time.monotonic() - started) / 60  # what ran, a round's tail included
    return {"target": target.name, "minutes": round(elapsed, 2), "examples": examples,
            "crashes": list(crashes.values())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("target", nargs="?")
    parser.add_argument("--minutes", type=float, default=1.0)
    parser.add_argument("--hang", type=int, default=10, help="seconds one example may take")
    parser.add_argument("--memory", type=int, default=2048, help="address-space cap in MiB")
    parser.add_argument("--list", action="store_true", help="print the target names")
    args = parser.parse_args(argv)
    targets = fuzz_targets.targets()
    if args.list or args.target is None:
        print("\n".join(targets))
        return 0
    chosen = [name for name in targets if fnmatch.fnmatchcase(name, args.target)]
    if not chosen:
        parser.error(f"no target matches {args.target!r} (--list prints them)")
    # The cap counts what is mapped already (libraries, the interpreter), plus the budget.
    with open("/proc/self/status") as f:
        mapped = next(int(line.split()[1]) for line in f if line.startswith("VmSize:")) << 10
    cap = mapped + (args.memory << 20)
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    signal.signal(signal.SIGALRM, _alarm)
    crashed = False
    for name in chosen:
        result = fuzz(targets[name], args.minutes, args.hang)
        print(json.dumps(result), flush=True)
        crashed |= bool(result["crashes"])
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
