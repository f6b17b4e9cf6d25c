"""CUDA / TensorRT device selection and its errors (cellsdk.platform.gpu, the backends, ``cellsdk devices``).

Three layers of evidence, none of which needs a GPU:
- the GPU stack faked at its seams (the ONNX Runtime module, the driver probe, the library loader, torch.cuda):
  which providers each device asks for, and each "asked for cuda but it is not there" message;
- the real driver probe and PyTorch build of this machine, and the real onnxruntime-gpu 1.31.1 wheel
  (unpacked by scripts/setup.sh into .venv/opt/onnxruntime-gpu), run in a subprocess;
- tests marked ``gpu`` that run the tiny model on a real GPU and skip elsewhere with the reason.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import ClassVar

import numpy as np
import pytest
from click.testing import CliRunner

import cellsdk.platform.gpu as gpu
from cellsdk import Classifier
from cellsdk.backends.onnxruntime import OnnxRuntimeBackend
from cellsdk.errors import ConfigError, DeviceUnavailableError

REPO = Path(__file__).resolve().parents[2]
GPU_ORT = REPO / ".venv" / "opt" / "onnxruntime-gpu"
ALL = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


class FakeSession:
    """An InferenceSession that records the providers asked for and 'starts' only those in ``starts``."""

    calls: ClassVar[list[list]] = []
    starts: tuple[str, ...] = ALL

    def __init__(self, path, sess_options=None, providers=None):
        FakeSession.calls.append(list(providers))
        names = [p if isinstance(p, str) else p[0] for p in providers]
        self._running = [n for n in names if n in FakeSession.starts] or ["CPUExecutionProvider"]

    def get_providers(self):
        return self._running

    def get_inputs(self):
        return [SimpleNamespace(name="input", shape=["batch", 3, 128, 128])]

    def get_outputs(self):
        return [SimpleNamespace(shape=["batch", 8])]

    def get_modelmeta(self):
        return SimpleNamespace(custom_metadata_map={})


class Stack:
    """The faked machine: what onnxruntime provides, the driver, the libraries that are missing."""

    def __init__(self):
        self.providers = ALL
        self.package = "onnxruntime-gpu"
        self.distributions = ("onnxruntime-gpu",)
        self.driver = gpu.Driver("580.159.04", (13, 0), 1, None)
        self.missing: set[str] = set()


@pytest.fixture()
def stack(monkeypatch):
    import onnxruntime as real

    state = Stack()
    FakeSession.calls, FakeSession.starts = [], ALL
    fake_ort = SimpleNamespace(SessionOptions=real.SessionOptions, GraphOptimizationLevel=real.GraphOptimizationLevel,
                               InferenceSession=FakeSession, get_available_providers=lambda: list(state.providers))
    monkeypatch.setattr(OnnxRuntimeBackend, "require", classmethod(lambda cls: fake_ort))
    monkeypatch.setattr(gpu, "onnxruntime_build", lambda ort: gpu.OnnxRuntimeBuild(
        state.package, "1.31.1", (13, 0) if "CUDAExecutionProvider" in state.providers else None,
        tuple(state.providers), state.distributions, 10 if "TensorrtExecutionProvider" in state.providers else None))
    monkeypatch.setattr(gpu, "nvidia_driver", lambda: state.driver)
    monkeypatch.setattr(gpu, "load_libraries", lambda names: [n for n in names if n in state.missing])
    state.ort = fake_ort
    return state


def model_file(tmp_path: Path, quantized: bool) -> Path:
    path = tmp_path / ("q.onnx" if quantized else "f.onnx")
    path.write_bytes(b"onnx graph: Conv Relu" + (b" DequantizeLinear" if quantized else b""))
    return path


# ---------------------------------------------------------------- auto-selection, providers faked

def test_auto_picks_cuda_when_the_whole_stack_is_there(stack, tmp_path):
    backend = OnnxRuntimeBackend(model_file(tmp_path, False), device="auto")
    assert FakeSession.calls == [[("CUDAExecutionProvider", {"device_id": 0, "use_tf32": 0}), "CPUExecutionProvider"]]
    assert backend.device == "CUDAExecutionProvider"


@pytest.mark.parametrize("what", ["cpu build", "no driver", "no gpu", "old driver", "no libraries"])
def test_auto_falls_back_to_the_cpu_quietly_when_any_piece_is_missing(stack, tmp_path, what):
    if what == "cpu build":
        stack.providers, stack.package, stack.distributions = ("CPUExecutionProvider",), "onnxruntime", ("onnxruntime",)
    elif what == "no driver":
        stack.driver = gpu.Driver(None, None, 0, "no NVIDIA driver on this machine (libcuda.so.1 not found): ...")
    elif what == "no gpu":
        stack.driver = gpu.Driver("580.159.04", (13, 0), 0, "the NVIDIA driver shows no GPU to this process")
    elif what == "old driver":
        stack.driver = gpu.Driver("535.54.03", (12, 2), 1, None)
    else:
        stack.missing = {"libcudnn.so.9"}
    backend = OnnxRuntimeBackend(model_file(tmp_path, False), device="auto")
    assert FakeSession.calls == [["CPUExecutionProvider"]]
    assert backend.device == "CPUExecutionProvider"


def test_cpu_never_touches_the_gpu_stack(stack, tmp_path, monkeypatch):
    monkeypatch.setattr(gpu, "nvidia_driver", lambda: pytest.fail("device cpu probed the driver"))
    assert OnnxRuntimeBackend(model_file(tmp_path, False), device="cpu").device == "CPUExecutionProvider"
    assert FakeSession.calls == [["CPUExecutionProvider"]]


def test_cuda_n_picks_that_gpu_and_a_missing_one_is_named(stack, tmp_path):
    stack.driver = gpu.Driver("580.159.04", (13, 0), 2, None)
    OnnxRuntimeBackend(model_file(tmp_path, False), device="cuda:1")
    assert FakeSession.calls[-1] == [("CUDAExecutionProvider", {"device_id": 1, "use_tf32": 0}), "CPUExecutionProvider"]
    with pytest.raises(DeviceUnavailableError, match=r"cuda:2 does not exist: this machine shows 2 GPU\(s\) "
                                                     r"\(cuda:0, cuda:1\)"):
        OnnxRuntimeBackend(model_file(tmp_path, False), device="cuda:2")


def test_tensorrt_asks_for_an_engine_cache_and_the_precision_the_model_needs(stack, tmp_path):
    cache = tmp_path / "engines"
    OnnxRuntimeBackend(model_file(tmp_path, True), device="tensorrt", tensorrt_cache=str(cache))
    trt, cuda, cpu = FakeSession.calls[-1]
    assert trt[0] == "TensorrtExecutionProvider" and cuda == ("CUDAExecutionProvider", {"device_id": 0, "use_tf32": 0})
    assert cpu == "CPUExecutionProvider" and cache.is_dir()
    assert trt[1]["trt_engine_cache_enable"] and trt[1]["trt_engine_cache_path"] == str(cache)
    assert trt[1]["trt_timing_cache_enable"] and trt[1]["trt_int8_enable"] and not trt[1]["trt_fp16_enable"]
    OnnxRuntimeBackend(model_file(tmp_path, False), device="tensorrt:0", tensorrt_fp16=True,
                       tensorrt_cache=str(cache))
    options = FakeSession.calls[-1][0][1]
    assert options["trt_fp16_enable"] and not options["trt_int8_enable"]


def test_tensorrt_cache_defaults_under_cellsdk_cache(stack, tmp_path, monkeypatch):
    monkeypatch.setenv("CELLSDK_CACHE", str(tmp_path / "cache"))
    OnnxRuntimeBackend(model_file(tmp_path, False), device="tensorrt")
    assert FakeSession.calls[-1][0][1]["trt_engine_cache_path"] == str(tmp_path / "cache" / "tensorrt")


def test_auto_never_picks_tensorrt(stack, tmp_path):
    OnnxRuntimeBackend(model_file(tmp_path, False), device="auto")
    assert all((p if isinstance(p, str) else p[0]) != "TensorrtExecutionProvider" for p in FakeSession.calls[-1])


# ---------------------------------------------------------------- "asked for cuda but it is not there"

@pytest.mark.parametrize(("device", "setup", "message"), [
    ("cuda", lambda s: setattr(s, "providers", ("CPUExecutionProvider",)) or setattr(s, "package", "onnxruntime")
     or setattr(s, "distributions", ("onnxruntime",)),
     r"device 'cuda': the onnxruntime installed \(1\.31\.1\) is the CPU build: pip install 'cellsdk\[cuda\]' && "
     r"pip install --force-reinstall --no-deps 'onnxruntime-gpu==1\.31\.1' \(docs/gpu\.md, 'On an NVIDIA GPU'\), "
     r"or use device 'cpu'"),
    ("cuda", lambda s: setattr(s, "providers", ("CPUExecutionProvider",))
     or setattr(s, "distributions", ("onnxruntime", "onnxruntime-gpu")),
     r"onnxruntime and onnxruntime-gpu are both installed and the CPU build's files are the ones in place \(they "
     r"share one folder\): pip install --force-reinstall --no-deps 'onnxruntime-gpu==\d"),
    ("cuda", lambda s: setattr(s, "driver", gpu.Driver(None, None, 0, "no NVIDIA driver on this machine "
                                                                      "(libcuda.so.1 not found): install it")),
     r"device 'cuda': no NVIDIA driver on this machine \(libcuda\.so\.1 not found\)"),
    ("cuda", lambda s: setattr(s, "driver", gpu.Driver("535.54.03", (12, 2), 1, None)),
     r"the NVIDIA driver 535\.54\.03 supports CUDA 12\.2 but onnxruntime-gpu 1\.31\.1 is built for CUDA 13\.0: "
     r"update the NVIDIA driver \(>= 580\.65\.06\)"),
    ("cuda", lambda s: setattr(s, "missing", {"libcublasLt.so.13", "libcudnn.so.9"}),
     r"needs CUDA 13 and cuDNN 9 libraries that are not found \(libcublasLt\.so\.13, libcudnn\.so\.9\): "
     r"pip install 'onnxruntime-gpu\[cuda,cudnn\]==1\.31\.1'"),
    ("tensorrt", lambda s: setattr(s, "missing", {"libnvinfer.so.10", "libnvonnxparser.so.10"}),
     r"TensorRT provider needs TensorRT 10, which is not found \(libnvinfer\.so\.10, libnvonnxparser\.so\.10\): "
     r"pip install 'tensorrt-cu13>=10\.13,<11'"),
    ("tensorrt", lambda s: setattr(s, "providers", ("CUDAExecutionProvider", "CPUExecutionProvider")),
     r"has no TensorRT provider"),
])
def test_a_gpu_that_is_not_there_is_one_line_naming_what_to_install(stack, tmp_path, device, setup, message):
    setup(stack)
    with pytest.raises(DeviceUnavailableError, match=message) as caught:
        OnnxRuntimeBackend(model_file(tmp_path, False), device=device)
    assert "\n" not in str(caught.value)
    assert FakeSession.calls == []  # refused before ONNX Runtime could fall back and print its own red lines


def test_a_provider_that_fails_to_start_is_refused_not_run_on_the_cpu(stack, tmp_path):
    FakeSession.starts = ("CPUExecutionProvider",)  # ONNX Runtime's own fallback: the session runs on the CPU
    with pytest.raises(DeviceUnavailableError, match=r"could not start its CUDAExecutionProvider and fell back to "
                                                     r"CPUExecutionProvider; `cellsdk devices` shows what is missing"):
        OnnxRuntimeBackend(model_file(tmp_path, False), device="cuda")


def test_auto_accepts_onnxruntimes_own_fallback_to_the_cpu(stack, tmp_path):
    FakeSession.starts = ("CPUExecutionProvider",)
    assert OnnxRuntimeBackend(model_file(tmp_path, False), device="auto").device == "CPUExecutionProvider"


def test_explicit_providers_are_taken_as_given(stack, tmp_path):
    FakeSession.starts = ("CPUExecutionProvider",)
    backend = OnnxRuntimeBackend(model_file(tmp_path, False), device="cuda",
                                 providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert backend.device == "CPUExecutionProvider"


@pytest.mark.parametrize("device", ["cuda:x", "cpu:1", "metal", "auto:0"])
def test_unknown_onnxruntime_devices(stack, tmp_path, device):
    with pytest.raises(ConfigError, match="is not an onnxruntime device: use auto, cpu, cuda, cuda:N, tensorrt"):
        OnnxRuntimeBackend(model_file(tmp_path, False), device=device)


def test_an_unwritable_engine_cache_is_one_line(stack, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match=r"tensorrt_cache: .*pass a writable folder"):
        OnnxRuntimeBackend(model_file(tmp_path, False), device="tensorrt", tensorrt_cache=str(blocker / "sub"))


def test_classifier_load_passes_the_device_error_through(stack):
    stack.driver = gpu.Driver(None, None, 0, "no NVIDIA driver on this machine (libcuda.so.1 not found): install")
    with pytest.raises(DeviceUnavailableError, match="device 'cuda': no NVIDIA driver"):
        Classifier.load(device="cuda")


# ---------------------------------------------------------------- PyTorch (TorchScript and training)

@pytest.fixture()
def fake_torch_cuda(monkeypatch):
    import torch

    state = SimpleNamespace(available=False, count=0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: state.available)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: state.count)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(gpu, "nvidia_driver", lambda: gpu.Driver("580.159.04", (13, 0), state.count, None)
                        if state.count else gpu.Driver(None, None, 0, "no NVIDIA driver on this machine "
                                                                      "(libcuda.so.1 not found): install it"))
    return state


def test_torch_device_auto_and_explicit_with_cuda_faked(fake_torch_cuda, monkeypatch):
    import torch

    from cellsdk.backends.torchscript import resolve_torch_device

    fake_torch_cuda.available, fake_torch_cuda.count = True, 1
    assert resolve_torch_device("auto") == "cuda" and resolve_torch_device("cuda:0") == "cuda:0"
    with pytest.raises(DeviceUnavailableError, match=r"cuda:1 does not exist: this machine shows 1 GPU\(s\)"):
        resolve_torch_device("cuda:1")
    fake_torch_cuda.available, fake_torch_cuda.count = False, 0
    assert resolve_torch_device("auto") in ("cpu", "mps")
    with pytest.raises(DeviceUnavailableError, match="device 'cuda': no NVIDIA driver on this machine"):
        resolve_torch_device("cuda")
    monkeypatch.setattr(torch.version, "cuda", None)
    with pytest.raises(DeviceUnavailableError, match=r"this PyTorch \(.*\) is a CPU-only build: install a CUDA build"):
        resolve_torch_device("cuda")


def test_torch_built_for_a_newer_cuda_than_the_driver(fake_torch_cuda, monkeypatch):
    from cellsdk.backends.torchscript import resolve_torch_device

    monkeypatch.setattr(gpu, "nvidia_driver", lambda: gpu.Driver("550.54.14", (12, 4), 1, None))
    with pytest.raises(DeviceUnavailableError, match=r"supports CUDA 12\.4 but PyTorch .* is built for CUDA 13\.0: "
                                                     r"update the NVIDIA driver \(>= 580\.65\.06\)"):
        resolve_torch_device("cuda")


def test_training_on_a_missing_gpu_is_refused_before_it_starts(fake_torch_cuda, tmp_path, samples):
    from cellsdk.training import TrainConfig, train

    config = TrainConfig.quick(arch="test_efficientnet", pretrained="none", input_size=32, epochs=1, device="cuda")
    with pytest.raises(DeviceUnavailableError, match="device 'cuda': no NVIDIA driver"):
        train(samples, tmp_path / "run", config, progress=False)


# ---------------------------------------------------------------- this machine, for real

def test_the_real_driver_probe_names_what_is_missing():
    driver = gpu.nvidia_driver()
    if driver.problem is None:
        assert driver.gpus >= 1 and driver.cuda is not None
        return
    assert "\n" not in driver.problem and ("NVIDIA" in driver.problem or "macOS" in driver.problem)


def test_this_torch_on_cuda_runs_or_says_why():
    import torch

    from cellsdk.backends.torchscript import resolve_torch_device

    if gpu.torch_cuda_problem(torch) is None:
        assert resolve_torch_device("cuda") == "cuda"
    else:
        with pytest.raises(DeviceUnavailableError, match="device 'cuda': ") as caught:
            resolve_torch_device("cuda")
        assert str(caught.value).endswith("or use device 'cpu'")


def test_cellsdk_devices_reports_every_runtime_and_require_exits_with_the_reason():
    from cellsdk.cli import devices_command

    result = CliRunner().invoke(devices_command, ["--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    pairs = {(r["device"], r["runtime"]) for r in rows}
    assert {("cpu", "onnxruntime"), ("cuda", "onnxruntime"), ("tensorrt", "onnxruntime"), ("driver", "nvidia"),
            ("cpu", "torch"), ("cuda", "torch"), ("coreml", "coreml")} <= pairs
    assert all(r["detail"] and "\n" not in r["detail"] for r in rows)
    assert CliRunner().invoke(devices_command, ["--no-torch", "--require", "cpu"]).exit_code == 0
    cuda_ready = any(r["available"] for r in rows if r["device"] == "cuda")
    result = CliRunner().invoke(devices_command, ["--no-torch", "--require", "cuda"])
    if not cuda_ready:
        assert result.exit_code == 1
        assert result.output.splitlines()[-1].startswith("Error: device 'cuda' is not usable here (onnxruntime: ")
    unknown = CliRunner().invoke(devices_command, ["--require", "metal"])
    assert unknown.exit_code != 0 and "unknown device 'metal'" in unknown.output


def _with_gpu_build(code: str, extra_path: Path | None = None) -> subprocess.CompletedProcess:
    if not (GPU_ORT / "onnxruntime").is_dir():
        pytest.skip(f"onnxruntime-gpu is not unpacked in {GPU_ORT} (scripts/setup.sh does it where pip can)")
    env = {**os.environ, "PYTHONPATH": str(extra_path or GPU_ORT)}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)


def test_the_real_onnxruntime_gpu_build_asked_for_cuda_here_says_what_is_missing():
    """The real onnxruntime-gpu 1.31.1 wheel: on a machine without a usable GPU, one line naming the fix; on one
    with a GPU, the model runs on CUDA and agrees with the CPU."""
    code = """
import json
import onnxruntime
from cellsdk import Classifier
from cellsdk.errors import DeviceUnavailableError
from cellsdk.platform.gpu import onnxruntime_cuda_problem
out = {"build": onnxruntime.capi.build_and_package_info.package_name, "problem": onnxruntime_cuda_problem(onnxruntime)}
auto = Classifier.load(device="auto")
out["auto"] = auto.device
try:
    clf = Classifier.load(device="cuda")
    out["cuda"] = clf.device
except DeviceUnavailableError as err:
    out["error"] = str(err)
print(json.dumps(out))
"""
    result = _with_gpu_build(code)
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["build"] == "onnxruntime-gpu"
    if out["problem"] is None:  # a machine with a usable GPU
        assert out["auto"] == out["cuda"] == "CUDAExecutionProvider"
        return
    assert out["auto"] == "CPUExecutionProvider"
    assert out["error"] == f"device 'cuda': {out['problem']}" and "\n" not in out["error"]
    # auto on a machine without a GPU does not print ONNX Runtime's red provider errors
    assert "Failed to load library" not in result.stderr and "EP Error" not in result.stderr


def test_the_real_gpu_build_through_the_cli_is_one_line(tmp_path):
    sample = next((REPO / "samples" / "bloodmnist_128" / "test").glob("*/*.jpg"))
    code = ("import sys; from cellsdk.cli import predict_command; "
            f"sys.argv = ['cellsdk-predict', '--device', 'cuda', {str(sample)!r}]; predict_command()")
    result = _with_gpu_build(code)
    if result.returncode == 0:
        return  # a machine with a usable GPU classified it
    assert result.returncode == 1 and "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("Error: device 'cuda': ") and ("NVIDIA" in line or "CUDA" in line)


def test_both_onnxruntime_packages_installed_is_named(tmp_path):
    """The CPU build's files in place while onnxruntime-gpu is also installed (what `pip install cellsdk[cuda]`
    alone leaves, since both share one folder): only the dist-info of the GPU build is on the path here."""
    shadow = tmp_path / "site"
    info = next(GPU_ORT.glob("onnxruntime_gpu-*.dist-info"), None) if GPU_ORT.is_dir() else None
    if info is None:
        pytest.skip(f"onnxruntime-gpu is not unpacked in {GPU_ORT}")
    (shadow / info.name).mkdir(parents=True)
    (shadow / info.name / "METADATA").write_text((info / "METADATA").read_text())
    code = ("import onnxruntime; from cellsdk.platform.gpu import onnxruntime_cuda_problem; "
            "print(onnxruntime_cuda_problem(onnxruntime))")
    result = _with_gpu_build(code, extra_path=shadow)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == ("onnxruntime and onnxruntime-gpu are both installed and the CPU build's files "
                                     "are the ones in place (they share one folder): pip install --force-reinstall "
                                     f"--no-deps 'onnxruntime-gpu=={info.name.removesuffix('.dist-info').split('-')[1]}'")


# ---------------------------------------------------------------- on a real GPU (skipped elsewhere, with the reason)

def _ort_cuda(tensorrt: bool = False):
    import onnxruntime

    problem = gpu.onnxruntime_cuda_problem(onnxruntime, tensorrt=tensorrt)
    if problem:
        pytest.skip(f"no usable {'TensorRT' if tensorrt else 'CUDA'} for onnxruntime here: {problem}")


def _images(samples: Path, count: int = 16) -> list[Path]:
    return sorted(samples.glob("test/*/*.jpg"))[:count]


@pytest.mark.gpu
def test_gpu_onnx_fp32_on_cuda_agrees_with_the_cpu(artefacts, samples):
    _ort_cuda()
    cpu = Classifier.load(artefacts["onnxruntime"], device="cpu")
    cuda = Classifier.load(artefacts["onnxruntime"], device="cuda")
    assert cuda.device == "CUDAExecutionProvider"
    images = _images(samples)
    a = np.stack([p.probabilities for p in cpu.predict_batch(images)])
    b = np.stack([p.probabilities for p in cuda.predict_batch(images)])
    np.testing.assert_allclose(a, b, atol=2e-3)


@pytest.mark.gpu
def test_gpu_tensorrt_builds_an_engine_once_and_reuses_it(artefacts, samples, tmp_path):
    _ort_cuda(tensorrt=True)
    cache = tmp_path / "engines"
    first = Classifier.load(artefacts["onnxruntime"], device="tensorrt", tensorrt_cache=str(cache))
    labels = [p.label for p in first.predict_batch(_images(samples))]
    engines = sorted(p.name for p in cache.iterdir())
    assert first.device == "TensorrtExecutionProvider" and engines
    second = Classifier.load(artefacts["onnxruntime"], device="tensorrt", tensorrt_cache=str(cache))
    assert [p.label for p in second.predict_batch(_images(samples))] == labels
    assert sorted(p.name for p in cache.iterdir()) == engines  # reused, not rebuilt


@pytest.mark.gpu
def test_gpu_torchscript_on_cuda_agrees_with_the_cpu(artefacts, samples):
    import torch

    if gpu.torch_cuda_problem(torch):
        pytest.skip(f"no usable CUDA for PyTorch here: {gpu.torch_cuda_problem(torch)}")
    if "torchscript" not in artefacts:
        pytest.skip("no TorchScript artefact")
    cpu = Classifier.load(artefacts["torchscript"], device="cpu")
    cuda = Classifier.load(artefacts["torchscript"], device="cuda")
    assert cuda.device == "cuda"
    images = _images(samples)
    a = np.stack([p.probabilities for p in cpu.predict_batch(images)])
    b = np.stack([p.probabilities for p in cuda.predict_batch(images)])
    np.testing.assert_allclose(a, b, atol=2e-3)


@pytest.mark.gpu
def test_gpu_training_with_fp16_autocast_and_the_grad_scaler(samples, tmp_path):
    import torch

    if gpu.torch_cuda_problem(torch):
        pytest.skip(f"no usable CUDA for PyTorch here: {gpu.torch_cuda_problem(torch)}")
    from cellsdk.training import TrainConfig, load_checkpoint, train

    config = TrainConfig.quick(arch="test_efficientnet", pretrained="none", input_size=32, epochs=2, batch_size=16,
                               device="cuda", amp="fp16", crop_mode="pixels", crop_value=200, data_cropped=True)
    result = train(samples, tmp_path / "run", config, progress=False)
    assert all(np.isfinite(row["train_loss"]) for row in result.history)
    state = torch.load(tmp_path / "run" / "last_state.pt", map_location="cpu", weights_only=True)
    assert state["scaler"]["scale"] > 0  # the GradScaler was enabled (a disabled one saves an empty state)
    model, _ = load_checkpoint(result.best_checkpoint)  # a GPU-trained checkpoint loads on the CPU
    assert next(model.parameters()).device.type == "cpu"


def test_bench_on_a_missing_gpu_measures_nothing_and_says_why():
    from cellsdk.classifier import default_model_path
    from cellsdk.cli import bench_command

    problem = gpu.driver_problem()
    if problem is None:
        pytest.skip("this machine has a usable NVIDIA GPU")
    result = CliRunner().invoke(bench_command, [str(default_model_path()), "--device", "cuda,tensorrt", "--quiet",
                                                "--no-eager", "--iterations", "2"])
    assert result.exit_code == 1
    assert (f"skipped: {default_model_path().name} on cuda, {default_model_path().name} on tensorrt ({problem})"
            in result.output)  # one line per reason
    assert result.output.splitlines()[-1].startswith("Error: nothing measured on --device cuda,tensorrt: every row "
                                                     "was skipped (")


def test_a_conversion_folder_on_a_gpu_device_picks_an_artefact_that_runs_there(converted):
    from cellsdk.artefacts.manifest import choose_artefact

    folder = converted.out_dir
    cpu_path, _, _ = choose_artefact(folder, "x86-64-avx2")
    for device in ("cuda", "cuda:1", "tensorrt"):
        path, why, _ = choose_artefact(folder, "x86-64-avx2", device)
        allowed = (".onnx",) if device == "tensorrt" else (".onnx", ".torchscript")
        assert path.suffix in allowed, (device, path)
        assert "fp16" in path.name or "fp32" in path.name  # the CPU's int8 choice is not the GPU's
        assert f"cellsdk verified it on CPUs, not on this GPU (cellsdk verify {path.name} --device {device}" in why
    assert choose_artefact(folder, "x86-64-avx2", "cpu")[0] == cpu_path
    if gpu.driver_problem():
        with pytest.raises(DeviceUnavailableError, match="device 'cuda': "):  # not OpenVINO's "not a CUDA device"
            Classifier.load(folder, device="cuda")


@pytest.mark.parametrize("device", ["cuda", "cuda:0", "tensorrt"])
def test_openvino_and_coreml_refuse_nvidia_devices_in_one_line(artefacts, tmp_path, device):
    if "openvino" in artefacts:
        with pytest.raises(ConfigError, match=r"OpenVINO does not run on NVIDIA devices .*: use device cpu, gpu "
                                              r"\(Intel\), npu or auto, or the model's \.onnx / \.torchscript"):
            Classifier.load(artefacts["openvino"], device=device)
    package = tmp_path / "model.mlpackage"
    package.mkdir()
    with pytest.raises(ConfigError, match="is not a CoreML device: use device auto, and compute_units"):
        Classifier.load(package, device=device)
