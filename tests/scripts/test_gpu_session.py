"""scripts/gpu_session.sh: the parts that carry onnxruntime-gpu and the data to a lent GPU machine.

The download and the install need the package registry and the device's Python 3.12; what is tested here is the
cutting and the taking: every part checked, taken once and in order, joined to the bytes that were cut.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "gpu_session.sh"
pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("split") is None,
                                reason="needs bash and coreutils")


def _run(root: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(root / "scripts" / "gpu_session.sh"), *args], cwd=root, env=env,
                          capture_output=True, text=True)


def test_parts_are_taken_once_in_order_and_joined_to_what_was_cut(tmp_path):
    here, device = tmp_path / "here", tmp_path / "device"
    for root in (here, device):
        (root / "scripts").mkdir(parents=True)
        shutil.copy(SCRIPT, root / "scripts" / "gpu_session.sh")
    payload = os.urandom(2_500_000)  # 1 MiB parts: 3 of them
    (tmp_path / "b.tar").write_bytes(payload)
    env = {**os.environ, "GPU_CARRY_PART_MIB": "1", "GPU_CARRY_STORE": str(tmp_path / "store")}
    assert _run(here, "cut", "b", str(tmp_path / "b.tar"), env=env).returncode == 0
    parts = sorted(p.name for p in (here / ".gpu_carry").iterdir() if p.is_dir())
    assert parts == ["b01", "b02", "b03"]

    def carry(name: str, damage: bool = False) -> subprocess.CompletedProcess:
        shutil.rmtree(device / ".gpu_carry", ignore_errors=True)
        shutil.copytree(here / ".gpu_carry" / name, device / ".gpu_carry" / name)
        if damage:
            with open(device / ".gpu_carry" / name / "part", "r+b") as part:
                part.seek(10)
                part.write(b"\x00" if part.read(1) != b"\x00" else b"\x01")
        return _run(device, "take", env=env)

    assert carry("b01").returncode == 0
    skipped = carry("b03")
    assert skipped.returncode == 1 and "part 3 of bundle b came before part 2" in skipped.stderr
    assert skipped.stderr.count("\n") == 1  # one line
    damaged = carry("b02", damage=True)
    assert damaged.returncode == 1 and "b02: the part arrived damaged (sha256 differs): carry it again" in damaged.stderr
    assert "already taken" in carry("b01").stdout
    early = _run(device, "open", "b", env=env)
    assert early.returncode == 1 and "bundle b: 1 of 3 parts taken" in early.stderr
    assert carry("b02").returncode == 0 and carry("b03").returncode == 0
    joined = (tmp_path / "store" / "b.tar").read_bytes()
    assert hashlib.sha256(joined).hexdigest() == hashlib.sha256(payload).hexdigest()
    shutil.rmtree(device / ".gpu_carry")
    nothing = _run(device, "take", env=env)
    assert nothing.returncode == 1 and "no part carried: name one folder .gpu_carry/<bundle><NN>" in nothing.stderr
    assert "open what: a (data + weights) or b (onnxruntime-gpu)" in _run(device, "open", env=env).stderr
