"""Print the model card's tables (markdown) from a reference run's evaluation reports.

Every figure in MODEL_CARD.md's result tables comes from this output, so the card
can be regenerated rather than retyped.

Usage: python scripts/model_card_tables.py runs/reference > runs/reference/model_card_tables.md
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ORDER = ["checkpoint.fp32", "model.fp32.onnx", "model.fp16.onnx", "model.int8.onnx", "model.fp32.xml",
         "model.fp16.xml", "model.int8.xml", "model.fp32.torchscript", "model.int8.torchscript"]


def pct(value: float) -> str:
    return f"{value * 100:.2f}"


def main(run: Path) -> None:
    test = run / "test"
    reports = {name: json.loads((test / name / "report.json").read_text())
               for name in ORDER if (test / name / "report.json").is_file()}
    fp32 = reports["checkpoint.fp32"]
    labels = fp32["labels"]
    print(f"## Test split (n = {fp32['n']})\n")
    print("| model | runtime | size MB | accuracy % | Δ vs fp32 | macro-F1 % | min class recall % | ECE % |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in reports.items():
        runtime = "PyTorch (checkpoint)" if name == "checkpoint.fp32" else r["backend"]
        size = Path(r.get("checkpoint") or r["model"]).stat().st_size / 1e6 if name == "checkpoint.fp32" \
            else r["model_size_mb"]
        worst = min(labels, key=lambda label: r["per_class"][label]["recall"])
        print(f"| {name} | {runtime} | {size:.2f} | {pct(r['accuracy'])} | "
              f"{(r['accuracy'] - fp32['accuracy']) * 100:+.2f} | {pct(r['macro_f1'])} | "
              f"{pct(r['min_recall'])} ({worst}) | {pct(r['ece'])} |")
    print("\n## Recall per class on the test split (%)\n")
    print("| model | " + " | ".join(labels) + " |")
    print("|---|" + "---|" * len(labels))
    print("| support | " + " | ".join(str(fp32["per_class"][label]["support"]) for label in labels) + " |")
    for name, r in reports.items():
        print(f"| {name} | " + " | ".join(pct(r["per_class"][label]["recall"]) for label in labels) + " |")
    print("\n## Precision / recall / F1 per class, INT8 ONNX (shipped), test split (%)\n")
    shipped = reports.get("model.int8.onnx", fp32)
    print("| class | precision | recall | F1 | support |")
    print("|---|---|---|---|---|")
    for label in labels:
        row = shipped["per_class"][label]
        print(f"| {label} | {pct(row['precision'])} | {pct(row['recall'])} | {pct(row['f1'])} | {row['support']} |")
    print("\n## Confusion matrix, INT8 ONNX, test split (rows true, columns predicted)\n")
    print("| true \\ predicted | " + " | ".join(labels) + " |")
    print("|---|" + "---|" * len(labels))
    for label, row in zip(labels, shipped["confusion_matrix"], strict=True):
        print(f"| {label} | " + " | ".join(str(v) for v in row) + " |")
    print("\n## Raw microscope originals (PBC, BloodMNIST test split), end to end\n")
    print("| model | n | accuracy % | macro-F1 % | min class recall % | ECE % |")
    print("|---|---|---|---|---|---|")
    for name in ("pbc_raw.checkpoint.fp32", "pbc_raw.int8.onnx"):
        path = test / name / "report.json"
        if path.is_file():
            r = json.loads(path.read_text())
            worst = min(r["labels"], key=lambda label: r["per_class"][label]["recall"])
            print(f"| {name} | {r['n']} | {pct(r['accuracy'])} | {pct(r['macro_f1'])} | "
                  f"{pct(r['min_recall'])} ({worst}) | {pct(r['ece'])} |")
    history = run / "history.json"
    if history.is_file():
        epochs = json.loads(history.read_text())
        epochs = epochs.get("epochs", epochs) if isinstance(epochs, dict) else epochs
        print("\n## Training (validation split)\n")
        print("| epoch | train loss | val loss | val accuracy % | val macro-F1 % | seconds |")
        print("|---|---|---|---|---|---|")
        for e in epochs:
            print(f"| {e.get('epoch')} | {e.get('train_loss', 0):.4f} | {e.get('val_loss', 0):.4f} | "
                  f"{pct(e.get('val_accuracy', 0))} | {pct(e.get('val_macro_f1', 0))} | {e.get('seconds', 0):.1f} |")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/reference"))
