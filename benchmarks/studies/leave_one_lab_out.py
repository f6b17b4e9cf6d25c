"""The leave-one-lab-out table: a base model trained on several labs, evaluated on a lab it never saw.

    python -m cellsdk.benchmarks.studies.leave_one_lab_out CHECKPOINT --lab NAME=ADAPT_DIR:TEST_DIR [--lab ...]
        --replay DATA [--replay-cropped] [--pbc-test LABELS_CSV] [--k 10] [--set key=value ...]
        [--skip-base] [--all] [--out DIR]

For each development lab X, a generalist is made from ``CHECKPOINT`` with every labelled cell of the *other*
labs' ``ADAPT_DIR`` (their ``test/`` cells are never used) and the replay data (the training lab), with the
cross-lab recipe (:meth:`cellsdk.training.adaptation.AdaptConfig.generalist`: stain / colour augmentation,
blur / noise / JPEG, the scale step fitted on the training lab's measured cell size, BatchNorm statistics
learned across the labs). It is then scored on X's ``TEST_DIR`` with no label of X (zero-shot) and after
``cellsdk adapt`` with ``k`` labelled cells of each class of X's ``ADAPT_DIR``, and on the PBC test originals
(``--pbc-test``). The same two scores for ``CHECKPOINT`` itself (the old base) unless ``--skip-base``. ``--all``
also trains the candidate successor on every lab (``OUT/all/best.safetensors``; no lab is held out, so it has
PBC figures only). fp32 checkpoints (PyTorch); accuracies carry Wilson 95 % intervals. Results go to
``OUT/leave_one_lab_out.json`` and a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cellsdk.datasets import is_image
from cellsdk.platform.cpu import host_cpu

__all__ = ["link_labs", "markdown"]


def link_labs(adapt_dirs: Sequence[tuple[str, Path]], into: Path) -> Path:
    """``into/<class>/<lab>__<file>``: symlinks to every labelled cell of several labs, one class folder each.

    Examples:
        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp())
        >>> _ = (root / "a" / "monocyte").mkdir(parents=True), (root / "a" / "monocyte" / "1.png").write_bytes(b"")
        >>> sorted(p.name for p in link_labs([("labA", root / "a")], root / "all").rglob("*.png"))
        ['labA__1.png']
    """
    for lab, adapt_dir in adapt_dirs:
        for folder in sorted(p for p in adapt_dir.iterdir() if p.is_dir()):
            target = into / folder.name
            target.mkdir(parents=True, exist_ok=True)
            for path in sorted(p for p in folder.iterdir() if is_image(p)):
                (target / f"{lab}__{path.name}").symlink_to(path.resolve())
    return into


def _cell(metrics: dict[str, Any] | None) -> str:
    if not metrics:
        return "–"
    low, high = metrics["accuracy_95ci"]
    return (f"{100 * metrics['accuracy']:.1f} % [{100 * low:.0f}–{100 * high:.0f}] "
            f"(bal. {100 * metrics['balanced_accuracy']:.1f} %)")


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The table: one row per (base model, held-out lab).

    Examples:
        >>> m = {"accuracy": 0.5, "accuracy_95ci": [0.3, 0.7], "balanced_accuracy": 0.5}
        >>> print(markdown([{"base": "old", "held_out": "labB", "zero_shot": m, "k": 10, "adapted": m,
        ...                  "pbc_zero_shot": m, "pbc_adapted": None}]).splitlines()[-1])
        | old | labB | 50.0 % [30–70] (bal. 50.0 %) | 50.0 % [30–70] (bal. 50.0 %) | 50.0 % [30–70] (bal. 50.0 %) | – |
    """
    k = next((r["k"] for r in rows if r.get("k")), 10)
    lines = [f"| base model | held-out lab | zero-shot on it | k = {k} on it | PBC test, base | PBC test, k = {k} |",
             "| --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        lines.append(f"| {row['base']} | {row['held_out']} | {_cell(row.get('zero_shot'))} | "
                     f"{_cell(row.get('adapted'))} | {_cell(row.get('pbc_zero_shot'))} | "
                     f"{_cell(row.get('pbc_adapted'))} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--lab", action="append", required=True, metavar="NAME=ADAPT_DIR:TEST_DIR")
    parser.add_argument("--replay", type=Path, required=True)
    parser.add_argument("--replay-cropped", action="store_true")
    parser.add_argument("--pbc-test", type=Path, default=None, help="pbc_subset's labels.csv")
    parser.add_argument("--k", type=int, default=10, help="labelled cells per class of the held-out lab (0: none)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=JSON",
                        help="fields of the generalist recipe to change")
    parser.add_argument("--skip-base", action="store_true", help="do not score the old base model")
    parser.add_argument("--all", action="store_true", help="also train the successor on every lab")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/leave_one_lab_out"))
    args = parser.parse_args()
    from cellsdk.benchmarks.studies.adaptation import (
        folder_items,
        link_subset,
        parse_labs,
        parse_overrides,
        pbc_test_items,
        score_checkpoint,
    )
    from cellsdk.training.adaptation import AdaptConfig, adapt

    labs = parse_labs(args.lab)
    overrides = parse_overrides(args.overrides)
    recipe = AdaptConfig.generalist(seed=args.seed, **overrides)
    pbc = pbc_test_items(args.pbc_test)
    cpu = host_cpu()
    rows: list[dict[str, Any]] = []
    args.out.mkdir(parents=True, exist_ok=True)

    def record(row: dict[str, Any]) -> None:
        rows.append(row)
        print(json.dumps(row), flush=True)
        report = {"cpu": cpu.to_dict(), "checkpoint": str(args.checkpoint), "recipe": recipe.to_dict(), "rows": rows}
        (args.out / "leave_one_lab_out.json").write_text(json.dumps(report, indent=1))
        (args.out / "leave_one_lab_out.md").write_text(markdown(rows) + "\n")

    def scored(base_name: str, slug: str, base: Path, held_out: str, scratch: Path) -> dict[str, Any]:
        adapt_dir, test_dir = labs[held_out]
        known = {p.name for p in adapt_dir.iterdir() if p.is_dir()}
        row: dict[str, Any] = {"base": base_name, "held_out": held_out, "checkpoint": str(base), "k": args.k,
                               "zero_shot": score_checkpoint(base, folder_items(test_dir), known),
                               "pbc_zero_shot": score_checkpoint(base, pbc) if pbc else None}
        if args.k:
            data = link_subset(adapt_dir, args.k, scratch / f"{slug}_{held_out}_k{args.k}", seed=args.seed)
            started = time.perf_counter()
            result = adapt(base, data, args.out / f"{slug}_{held_out}_k{args.k}", replay=args.replay,
                           replay_cropped=args.replay_cropped, overrides={"seed": args.seed}, convert=False,
                           progress=False)
            row["adapt_seconds"] = round(time.perf_counter() - started, 1)
            row["adapted"] = score_checkpoint(result.checkpoint, folder_items(test_dir), known)
            row["pbc_adapted"] = score_checkpoint(result.checkpoint, pbc) if pbc else None
        return row

    with tempfile.TemporaryDirectory() as temporary:
        scratch = Path(temporary)
        groups: list[tuple[str, list[str], str | None]] = [
            (f"without {name}", [other for other in labs if other != name], name) for name in labs]
        if args.all:
            groups.append(("all", list(labs), None))
        for tag, train_labs, held_out in groups:
            folder = "all" if held_out is None else f"without_{held_out}"
            data = link_labs([(lab, labs[lab][0]) for lab in train_labs], scratch / folder)
            started = time.perf_counter()
            result = adapt(args.checkpoint, data, args.out / folder, replay=args.replay,
                           replay_cropped=args.replay_cropped, config=recipe, convert=False, progress=False)
            seconds = round(time.perf_counter() - started, 1)
            if held_out is None:
                record({"base": "generalist (all labs)", "held_out": "–", "checkpoint": str(result.checkpoint),
                        "trained_on": train_labs, "train_seconds": seconds, "after": result.after,
                        "pbc_zero_shot": score_checkpoint(result.checkpoint, pbc) if pbc else None})
                continue
            row = scored(f"generalist ({tag})", "generalist", result.checkpoint, held_out, scratch)
            record({**row, "trained_on": train_labs, "train_seconds": seconds})
            if not args.skip_base:
                record(scored("old base", "old_base", args.checkpoint, held_out, scratch))
    print(markdown(rows))
    print(f"on {cpu.model} ({cpu.cpu_class}); wrote {args.out / 'leave_one_lab_out.json'}")
    return 0


if __name__ == "__main__":
    from cellsdk.benchmarks._script import run_script

    run_script(main, prog="leave_one_lab_out")
