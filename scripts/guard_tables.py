"""Model-card tables for the OOD guard from cellsdk-eval reports (see scripts/reference_model.sh).

    python scripts/guard_tables.py RUN/test/ood.model.int8.onnx/report.json RUN/test/ood.model.fp32.onnx/report.json \
        --test RUN/test/model.int8.onnx/report.json

Prints, per development OOD set, AUROC / FPR at 95 % TPR / share flagged for each report (one column per model),
and the guard's figures on the test split.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("reports", nargs="+", type=Path)
    parser.add_argument("--test", type=Path, action="append", default=[])
    args = parser.parse_args()
    reports = [json.loads(p.read_text()) for p in args.reports]
    names = [Path(r["model"]).name for r in reports]
    print("| development OOD set | images | " + " | ".join(f"{n}: AUROC / FPR@95 / flagged" for n in names) + " |")
    print("|---|---:|" + "---|" * len(reports))
    for folder in reports[0]["ood"]:
        cells = []
        for r in reports:
            row = r["ood"][folder]
            cells.append(f"{row['auroc']:.3f} / {row['fpr_at_95_tpr']:.2f} / {row['flagged'] * 100:.1f} %")
        print(f"| `{Path(folder).name}` | {reports[0]['ood'][folder]['images']} | " + " | ".join(cells) + " |")
    for r, n in zip(reports, names, strict=True):
        g = r["guard"]
        print(f"\n{n} on {r['data']} ({r['n']} images, in distribution): kept {g['kept'] * 100:.1f} %, "
              f"accuracy of kept {g['accuracy_kept'] * 100:.2f} % (all {g['accuracy_all'] * 100:.2f} %)")
    for path in args.test:
        r = json.loads(path.read_text())
        g = r["guard"]
        points = {p["coverage"]: p["accuracy"] for p in r["risk_coverage"]["points"]}
        print(f"\n{Path(r['model']).name}, {r['split']} split ({r['n']} images): status ok {g['kept'] * 100:.2f} %, "
              f"out of distribution {g['flagged_out_of_distribution'] * 100:.2f} %, uncertain {g['uncertain'] * 100:.2f} %; "
              f"accuracy of the kept answers {g['accuracy_kept'] * 100:.2f} % vs {g['accuracy_all'] * 100:.2f} % of all; "
              f"risk-coverage by confidence: 90 % -> {points.get(0.9, float('nan')) * 100:.2f} %, "
              f"95 % -> {points.get(0.95, float('nan')) * 100:.2f} %, AURC {r['risk_coverage']['aurc']:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
