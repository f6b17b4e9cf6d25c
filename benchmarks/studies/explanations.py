"""Are the torch-free explanations right? Agreement with Grad-CAM, pointing game, deletion, int8 vs fp32, cost.

``python -m cellsdk.benchmarks.studies.explanations --crops DATA --checkpoint CKPT --fp32 MODEL [--model MODEL] [--out DIR]``

On a stratified sample of the ``test`` split of ``--crops`` (the model's crops, e.g. ``bloodmnist_128``; read as
already cropped), with ``--model`` (default: the shipped INT8 ONNX) explaining its predicted class:

- **Grad-CAM agreement**: Spearman rank correlation between the runtime's map and Grad-CAM of the same class
  from the fp32 checkpoint in PyTorch (the ``grad-cam`` package), both at the input resolution;
- **int8 vs fp32**: Spearman between the int8 and ``--fp32`` artefacts' class activation maps on the feature
  grid (raw, unrectified), and how often their peak cell is the same;
- **pointing game**: how often the map's peak lies on the centred cell's nucleus (a mask from thresholding the
  stain: dark, blue-violet pixels, Otsu on the green channel, the component nearest the centre, dilated 3 px),
  against two baselines: the image centre, and a random pixel (the mask's share of the image);
- **deletion**: the predicted class's probability after replacing the map's top k % of pixels with a blurred
  copy of the image, against replacing k % random pixels (3 seeds), for k = 5, 10, 20, 40;
- **cost**: batch-1 ``explain()`` against ``predict()`` on the same images, interleaved, medians and ratio; with
  ``--without-cams MODEL`` (the same model converted without the output) also what the extra output costs
  ``predict()``.

Examples:
    >>> report = run_explain(ExplainBenchConfig(crops="../shared/data/bloodmnist_128", checkpoint="c.safetensors",
    ...                                         fp32="fp32.onnx"))  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

from cellsdk.errors import ConfigError

__all__ = ["ExplainBenchConfig", "format_explain", "nucleus_mask", "run_explain"]

DELETION_FRACTIONS = (0.05, 0.10, 0.20, 0.40)


@dataclass(frozen=True)
class ExplainBenchConfig:
    """Which data and models, how many images."""

    crops: str
    checkpoint: str
    fp32: str
    model: str | None = None
    without_cams: str | None = None
    images: int = 400
    latency_images: int = 150
    rounds: int = 3
    seed: int = 0


def nucleus_mask(pixels: np.ndarray, dilate: int = 3) -> np.ndarray:
    """The centred cell's nucleus in an ``H x W x 3`` uint8 stained-smear crop: dark, blue-violet pixels (green
    below its Otsu threshold, blue above green), the connected component nearest the centre, dilated.

    Examples:
        >>> image = np.full((64, 64, 3), 230, np.uint8); image[24:40, 24:40] = (90, 40, 160)  # a violet nucleus
        >>> mask = nucleus_mask(image)
        >>> bool(mask[32, 32]), bool(mask[2, 2])
        (True, False)
    """
    from scipy import ndimage

    rgb = pixels.astype(np.int32)
    green = rgb[..., 1]
    histogram = np.bincount(green.ravel(), minlength=256).astype(np.float64)
    weights = np.cumsum(histogram)
    means = np.cumsum(histogram * np.arange(256))
    total, total_mean = weights[-1], means[-1]
    between = (total_mean * weights - means * total) ** 2 / np.maximum(weights * (total - weights), 1e-9)
    threshold = int(np.argmax(between[:-1]))
    dark = (green <= threshold) & (rgb[..., 2] > green + 15)
    dark = ndimage.binary_opening(dark, iterations=1)
    labels, count = ndimage.label(dark)
    if count == 0:
        return dark
    height, width = green.shape
    centre = np.array([height / 2, width / 2])
    best, best_distance = 0, np.inf
    for index, points in enumerate(ndimage.find_objects(labels), start=1):
        ys, xs = np.nonzero(labels[points] == index)
        if len(ys) < 20:
            continue
        distance = float(np.min(np.hypot(ys + points[0].start - centre[0], xs + points[1].start - centre[1])))
        if distance < best_distance:
            best, best_distance = index, distance
    mask = labels == best if best else dark
    return ndimage.binary_dilation(mask, iterations=dilate) if dilate else mask


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    a, b = np.ravel(a), np.ravel(b)
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def _peak(heatmap: np.ndarray) -> tuple[int, int]:
    y, x = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    return int(y), int(x)


def _summary(values: list[float]) -> dict[str, float]:
    finite = [v for v in values if np.isfinite(v)]
    if not finite:  # e.g. a 1 x 1 feature grid: nothing to rank
        return {"n": 0, "mean": float("nan"), "median": float("nan"), "p10": float("nan"), "share_at_least_0.9": 0.0}
    return {"n": len(finite), "mean": round(float(np.mean(finite)), 4), "median": round(float(np.median(finite)), 4),
            "p10": round(float(np.percentile(finite, 10)), 4),
            "share_at_least_0.9": round(float(np.mean(np.asarray(finite) >= 0.9)), 4)}


def _sample(dataset: Any, split: Any, labels: tuple[str, ...], count: int, seed: int) -> tuple[list[Path], np.ndarray]:
    paths = list(split.paths or ())
    targets = np.asarray(dataset.targets_for(split, labels))
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    per_class = max(1, count // len(labels))
    for label in range(len(labels)):
        members = np.flatnonzero(targets == label)
        chosen.extend(rng.choice(members, size=min(per_class, len(members)), replace=False).tolist())
    chosen.sort()
    return [paths[i] for i in chosen], targets[chosen]


def run_explain(config: ExplainBenchConfig) -> dict[str, Any]:
    """Measure as the module docstring says; a JSON-ready report.

    Examples:
        >>> report = run_explain(ExplainBenchConfig(crops="samples/bloodmnist_128", checkpoint="c.safetensors",
        ...                                         fp32="fp32.onnx"))  # doctest: +SKIP
    """
    from cellsdk import Classifier
    from cellsdk.datasets import load_dataset
    from cellsdk.explain import explain_images
    from cellsdk.platform.cpu import host_cpu
    from cellsdk.preprocessing import load_image
    from cellsdk.training.gradcam import GradCamExplainer

    classifier = Classifier.load(config.model)
    crop_free = classifier.metadata.preprocessing.without_crop()
    model = classifier.with_preprocessing(crop_free)
    fp32 = Classifier.load(config.fp32).with_preprocessing(crop_free)
    if fp32.labels != model.labels:
        raise ConfigError(f"{config.fp32} has other labels than {model.path.name}")
    dataset = load_dataset(config.crops)
    paths, targets = _sample(dataset, dataset.split("test"), model.labels, config.images, config.seed)
    explainer = GradCamExplainer(config.checkpoint)
    explainer.metadata = explainer.metadata.replace(preprocessing=crop_free)

    grad_cam_rho, int8_fp32_rho, same_peak_cell = [], [], []
    hits = {"runtime map": 0, "grad-cam": 0, "image centre": 0}
    mask_share: list[float] = []
    deletion: dict[str, dict[float, list[float]]] = {"map": {k: [] for k in DELETION_FRACTIONS},
                                                      "random": {k: [] for k in DELETION_FRACTIONS}}
    base_probability: list[float] = []
    rng = np.random.default_rng(config.seed)
    correct = 0
    for start in range(0, len(paths), 16):
        chunk = paths[start:start + 16]
        images = [load_image(p) for p in chunk]
        explained = explain_images(model, images)
        reference = explainer.explain(images, target=None)
        for i, (image, ours) in enumerate(zip(images, explained, strict=True)):
            correct += int(ours.index == targets[start + i])
            theirs = explainer.explain([image], target=ours.index)[0] if reference[i].index != ours.index \
                else reference[i]
            grad_cam_rho.append(_spearman(ours.heatmap, theirs.heatmap))
            other = explain_images(fp32, [image], target=ours.index)[0]
            int8_fp32_rho.append(_spearman(ours.cam, other.cam))
            same_peak_cell.append(float(_peak(ours.cam) == _peak(other.cam)))
            pixels = np.asarray(image)
            mask = nucleus_mask(pixels)
            mask_share.append(float(mask.mean()))
            height, width = mask.shape
            hits["runtime map"] += int(mask[_peak(ours.heatmap)])
            hits["grad-cam"] += int(mask[_peak(theirs.heatmap)])
            hits["image centre"] += int(mask[height // 2, width // 2])
            # deletion: the map's top-k % pixels, or random ones, replaced by a blurred copy of the image
            blurred = np.asarray(image.filter(ImageFilter.GaussianBlur(8)))
            order = np.argsort(-ours.heatmap.ravel(), kind="stable")
            base_probability.append(ours.probability)
            variants, keys = [], []
            for fraction in DELETION_FRACTIONS:
                count = round(fraction * order.size)
                for kind, chosen in (("map", order[:count]),
                                     *(("random", rng.choice(order.size, size=count, replace=False)) for _ in range(3))):
                    flat = pixels.reshape(-1, 3).copy()
                    flat[chosen] = blurred.reshape(-1, 3)[chosen]
                    variants.append(Image.fromarray(flat.reshape(pixels.shape)))
                    keys.append((kind, fraction))
            probabilities = model.predict_proba(variants, batch_size=32)[:, ours.index]
            random_sums: dict[float, list[float]] = {}
            for (kind, fraction), p in zip(keys, probabilities, strict=True):
                if kind == "map":
                    deletion["map"][fraction].append(float(p))
                else:
                    random_sums.setdefault(fraction, []).append(float(p))
            for fraction, values in random_sums.items():
                deletion["random"][fraction].append(float(np.mean(values)))

    n = len(paths)
    deletion_table = {
        f"{int(k * 100)}%": {"map": round(float(np.mean(deletion["map"][k])), 4),
                             "random": round(float(np.mean(deletion["random"][k])), 4),
                             "map_lower_share": round(float(np.mean(np.asarray(deletion["map"][k]) <
                                                                    np.asarray(deletion["random"][k]))), 4)}
        for k in DELETION_FRACTIONS}

    # cost at batch 1: explain() against predict(), interleaved on the same files
    latency_paths = paths[:config.latency_images]
    models = {"predict": model.predict, "explain": model.explain}
    without = None
    if config.without_cams:
        without = Classifier.load(config.without_cams).with_preprocessing(crop_free)
        models["predict without cams output"] = without.predict
    times: dict[str, list[float]] = {name: [] for name in models}
    for path in latency_paths[:10]:
        for call in models.values():
            call(path)
    for _ in range(config.rounds):
        for path in latency_paths:
            for name, call in models.items():
                started = time.perf_counter()
                call(path)
                times[name].append((time.perf_counter() - started) * 1000)
    p50 = {name: statistics.median(values) for name, values in times.items()}
    cost = {"calls_each": len(times["predict"]), **{f"p50_{k.replace(' ', '_')}_ms": round(v, 3) for k, v in p50.items()},
            "explain_over_predict": round(p50["explain"] / p50["predict"], 3)}
    if without is not None:
        cost["predict_with_over_without_cams"] = round(p50["predict"] / p50["predict without cams output"], 3)
    cpu = host_cpu()
    return {"machine": {"model": cpu.model, "cpu_class": cpu.cpu_class},
            "model": model.path.name, "fp32": fp32.path.name, "checkpoint": Path(config.checkpoint).name,
            "data": f"{config.crops} (test split, stratified sample, already cropped)", "images": n,
            "accuracy_on_sample": round(correct / n, 4),
            "grad_cam_spearman": _summary(grad_cam_rho),
            "int8_vs_fp32": {"spearman": _summary(int8_fp32_rho),
                             "same_peak_cell": round(float(np.mean(same_peak_cell)), 4),
                             "grid": list(explained[0].cam.shape)},
            "pointing_game": {name: round(count / n, 4) for name, count in hits.items()}
            | {"random pixel (mask share)": round(float(np.mean(mask_share)), 4)},
            "deletion": {"base_probability": round(float(np.mean(base_probability)), 4), **deletion_table},
            "cost_batch1": cost}


def format_explain(report: dict[str, Any]) -> str:
    """The report as Markdown.

    Examples:
        >>> print(format_explain(report))  # doctest: +SKIP
    """
    g, q = report["grad_cam_spearman"], report["int8_vs_fp32"]
    lines = [f"{report['model']} (fp32: {report['fp32']}, Grad-CAM from {report['checkpoint']}) on "
             f"{report['machine']['model']}, class {report['machine']['cpu_class']}; {report['images']} images of "
             f"{report['data']}, accuracy {report['accuracy_on_sample'] * 100:.2f} % on them", "",
             "| check | mean | median | 10th percentile | share >= 0.9 |", "|---|---|---|---|---|",
             f"| Spearman: runtime map vs PyTorch Grad-CAM (input resolution) | {g['mean']} | {g['median']} | "
             f"{g['p10']} | {g['share_at_least_0.9'] * 100:.1f} % |",
             f"| Spearman: int8 vs fp32 maps ({q['grid'][0]} x {q['grid'][1]} grid, raw) | {q['spearman']['mean']} | "
             f"{q['spearman']['median']} | {q['spearman']['p10']} | {q['spearman']['share_at_least_0.9'] * 100:.1f} % |",
             "", f"int8 and fp32 peak in the same grid cell: {q['same_peak_cell'] * 100:.1f} %", "",
             "| pointing game: peak on the centred cell's nucleus | share |", "|---|---|"]
    lines += [f"| {name} | {share * 100:.1f} % |" for name, share in report["pointing_game"].items()]
    d = report["deletion"]
    lines += ["", f"deletion: mean probability of the explained class (before: {d['base_probability']:.4f}) after "
              "blurring", "", "| pixels blurred | top of the map | random (3 seeds) | images where the map's "
              "deletion hurts more |", "|---|---|---|---|"]
    lines += [f"| {k} | {v['map']:.4f} | {v['random']:.4f} | {v['map_lower_share'] * 100:.1f} % |"
              for k, v in d.items() if k != "base_probability"]
    c = report["cost_batch1"]
    lines += ["", f"batch-1 cost, p50 over {c['calls_each']} interleaved calls each: predict() {c['p50_predict_ms']} ms, "
              f"explain() {c['p50_explain_ms']} ms (x{c['explain_over_predict']})"]
    if "predict_with_over_without_cams" in c:
        lines.append(f"predict() of the same model converted without the cams output: "
                     f"{c['p50_predict_without_cams_output_ms']} ms (with / without x{c['predict_with_over_without_cams']})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from cellsdk._io import write_json, write_text

    parser = argparse.ArgumentParser(prog="python -m cellsdk.benchmarks.studies.explanations",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--crops", required=True)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--fp32", required=True)
    parser.add_argument("--model")
    parser.add_argument("--without-cams")
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--latency-images", type=int, default=150)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    report = run_explain(ExplainBenchConfig(crops=args.crops, checkpoint=args.checkpoint, fp32=args.fp32,
                                            model=args.model, without_cams=args.without_cams, images=args.images,
                                            latency_images=args.latency_images))
    print(format_explain(report))
    if args.out:
        write_json(args.out / "explain.json", report)
        write_text(args.out / "explain.md", format_explain(report) + "\n")
    return 0


if __name__ == "__main__":  # pragma: no cover
    from cellsdk.benchmarks._script import run_script

    run_script(main, prog="explain")
