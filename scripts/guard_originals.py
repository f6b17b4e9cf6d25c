"""Set a converted model's OOD threshold on its lab's full-resolution originals, and list what changes.

    python scripts/guard_originals.py MODEL --originals DIR [--compare NAME=FOLDER ...] [--write] [--json OUT]

DIR holds the training lab's images as the microscope delivers them, with a ``val`` split (for the shipped
model: ``scripts/pbc_split_folder.py ../shared/data/pbc_subset DIR/val --split val``). The new threshold is
:func:`cellsdk.converters.guard.deployed_threshold` (the one ``cellsdk-convert --guard-originals`` sets on every
artefact). Each ``--compare`` folder (every image in it) is run once; its statuses under the old and the new
threshold are counted, and every image whose status changes is listed with its score and the old reasons.
``--write`` stores the new threshold (and the record of how it was set) in MODEL's own metadata.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}


def main(argv: list[str] | None = None) -> int:
    from cellsdk import Classifier
    from cellsdk.converters.base import get_converter
    from cellsdk.converters.guard import deployed_threshold, originals_note
    from cellsdk.converters.pipeline import BACKEND_OF

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--originals", required=True, help="folder with a val split of full-resolution originals")
    parser.add_argument("--compare", action="append", default=[], metavar="NAME=FOLDER")
    parser.add_argument("--write", action="store_true", help="store the new threshold in MODEL")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args(argv)
    classifier = Classifier.load(args.model, self_check=False)
    guard = classifier.guard
    if guard is None:
        sys.exit(f"error: {args.model} carries no OOD guard")
    old = guard.threshold if "originals" not in guard.record else float(guard.record["originals"]["base_threshold"])
    record = deployed_threshold(classifier, args.originals, guard.retention, base=old)
    print(f"{args.model.name}: threshold {old:.6g} kept {record['kept_before'] * 100:.1f} % of "
          f"{record['images']} val originals; new {record['threshold']:.6g} (their {record['quantile']:.3f} "
          f"quantile) keeps {record['kept_after'] * 100:.1f} %")
    before, after = guard.with_thresholds(threshold=old), guard.with_thresholds(threshold=record["threshold"])
    figures: dict = {"model": str(args.model), "originals": record, "sets": {}}
    for spec in args.compare:
        name, _, folder = spec.partition("=")
        paths = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        runs = {}
        for state, g in (("before", before), ("after", after)):
            classifier.guard = g
            runs[state] = [item.value if item.ok else None for item in classifier.predict_iter(paths, errors="skip")]
        classifier.guard = guard
        flips = [{"image": str(path.relative_to(folder)), "before": b.status, "after": a.status, "score": b.ood_score,
                  "reasons_before": list(b.reasons)}
                 for path, b, a in zip(paths, runs["before"], runs["after"], strict=True)
                 if b is not None and a is not None and a.status != b.status]
        statuses = {state: dict(Counter(p.status if p else "error" for p in runs[state])) for state in runs}
        not_ok = {state: 1 - statuses[state].get("ok", 0) / max(len(paths), 1) for state in runs}
        figures["sets"][name] = {"images": len(paths), "statuses": statuses, "not_ok": not_ok, "changed": flips}
        print(f"{name}: {len(paths)} images; not ok {not_ok['before'] * 100:.1f} % -> {not_ok['after'] * 100:.1f} %; "
              f"{len(flips)} changed" + "".join(f"\n    {f['image']}: {f['before']} -> {f['after']} (score "
                                                f"{f['score']:.5g})" for f in flips[:40]))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1) + "\n")
    if args.write:
        metadata = classifier.metadata
        note = originals_note(record)
        if guard.record.get("threshold_note") and "originals" not in guard.record:
            note = f"{guard.record['threshold_note']}; {note}"
        elif "originals" in guard.record:
            note = guard.record.get("threshold_note", note)
        fmt = {backend: name for name, backend in BACKEND_OF.items()}[classifier.backend_name]
        get_converter(fmt).write_metadata(args.model, metadata.replace(guard={
            **metadata.guard, "threshold": record["threshold"], "threshold_note": note, "originals": record}))
        print(f"wrote the new threshold into {args.model}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
