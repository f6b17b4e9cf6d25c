"""Run the bad-input matrix (tests/bad_inputs.py) through the real console scripts and print it as a table.

Usage: .venv/bin/python scripts/bad_input_table.py [--out runs/bad_inputs]
Each row: the case, the exit code, and the one line the user reads (the error line, or the warning for cases
that succeed with a warning). Exits 1 if any case differs from what the table expects.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.cli.bad_inputs import CASES, console_command, make_fixtures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bad_inputs"))
    args = parser.parse_args()
    fixtures = make_fixtures(args.out.resolve())
    print("| case | exit | what the user reads | as expected |")
    print("|---|---|---|---|")
    wrong = 0
    for case in CASES:
        started = time.perf_counter()
        done = subprocess.run([*console_command(case), *case.resolve(fixtures)], capture_output=True, text=True,
                              timeout=600)
        output = done.stdout + done.stderr
        lines = [line for line in output.splitlines() if case.message in line] or output.strip().splitlines()[-1:]
        ok = done.returncode == case.exit_code and case.message in output and "Traceback" not in output
        wrong += not ok
        shown = lines[0].replace(str(args.out.resolve()), "…").replace("|", "\\|")[:220]
        print(f"| {case.name} | {done.returncode} | `{shown}` | {'yes' if ok else 'NO'} "
              f"({time.perf_counter() - started:.1f} s) |", flush=True)
    return 1 if wrong else 0


if __name__ == "__main__":
    raise SystemExit(main())
