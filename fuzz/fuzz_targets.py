"""Coverage-guided fuzzing (atheris) of the two parsers that read untrusted bytes: image decoding and metadata.

The targets themselves are in fuzz/targets.py (the test suite replays the corpus through the same functions).
Anything but a result or cellsdk's own typed error (an uncaught exception, a crash, a hang) is a finding.

Usage (what tests/test_fuzz.py runs in CI, time-bounded, from the committed corpus):
    python fuzz/fuzz_targets.py image fuzz/corpus/image -max_total_time=20
    python fuzz/fuzz_targets.py metadata fuzz/corpus/metadata -max_total_time=20
New inputs atheris finds that widen coverage are written into the corpus folder; commit the useful ones.
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent))
with atheris.instrument_imports():  # cellsdk's modules are imported (and instrumented) through the targets
    from targets import TARGETS

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        sys.exit(f"usage: {sys.argv[0]} {{{','.join(TARGETS)}}} [CORPUS_DIR] [libFuzzer options]")
    target = TARGETS[sys.argv.pop(1)]
    atheris.Setup(sys.argv, target)
    atheris.Fuzz()
