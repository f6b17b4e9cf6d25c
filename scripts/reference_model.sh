#!/usr/bin/env bash
# How the shipped reference model was made — the exact commands behind MODEL_CARD.md.
#
#   scripts/reference_model.sh            train, calibrate, convert, evaluate on test, bench
#   SHIP=1 scripts/reference_model.sh     ... and copy the results into the package / models/
#
# Needs ../shared/data (BloodMNIST-128 and the PBC subset) and about an hour on a 2-core CPU
# (training is 8 epochs of ~4.5 min). RUN (default runs/reference) holds everything.
# The recipe was chosen on the validation split; the test split is read only by the
# evaluation steps at the end, after every choice was made.
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
RUN=${RUN:-runs/reference}
DATA=${DATA:-../shared/data/bloodmnist_128}
PBC=${PBC:-../shared/data/pbc_subset}
NAME=bloodmnist_effnet_lite0_128

if [ -n "${CHECKPOINT:-}" ]; then
  mkdir -p "$RUN" && cp "$CHECKPOINT" "$RUN/$NAME.safetensors"
else
  if [ ! -f "$RUN/best.safetensors" ]; then
    cellsdk-train "$DATA" --out "$RUN" --epochs 8 --input-size 128 --crop 200px --data-cropped \
      --warmup-epochs 0.5 --labels bloodmnist
  fi
  # temperature scaling on val (label smoothing leaves the model under-confident); folded into the weights
  cellsdk-calibrate "$RUN/best.safetensors" --data "$DATA" --data-cropped --out "$RUN/$NAME.safetensors" --quiet
fi
# portable int8 (the default recipe), verified natively and under emulated Haswell / Nehalem (the default
# --verify-cpus; needs qemu-user), on the validation split
# the OOD threshold also keeps 95 % of the lab's full-resolution originals of the validation split (the path the
# microscope's images take: cellsdk's own 200 px crop and resize), not only of the BloodMNIST-128 crops
python scripts/pbc_split_folder.py "$PBC" "$RUN/pbc_originals/val" --split val
if [ ! -f "$RUN/converted/manifest.json" ]; then
  cellsdk-convert "$RUN/$NAME.safetensors" --out "$RUN/converted" --formats all --quantize fp16,int8 \
    --calib "$DATA" --data-cropped --guard-originals "$RUN/pbc_originals" --quiet
fi

# the test split, once: the fp32 checkpoint in PyTorch and every artefact as deployed (default runtime options)
mkdir -p "$RUN/test"
cellsdk-eval "$RUN/$NAME.safetensors" --data "$DATA" --split test --data-cropped --out "$RUN/test/checkpoint.fp32" --quiet
# the same checkpoint before temperature scaling (identical predictions; shows what calibration changed)
if [ -f "$RUN/best.safetensors" ]; then
  cellsdk-eval "$RUN/best.safetensors" --data "$DATA" --split test --data-cropped --out "$RUN/test/uncalibrated.fp32" --quiet
fi
for model in "$RUN"/converted/model.*.onnx "$RUN"/converted/model.*.xml "$RUN"/converted/model.*.torchscript \
    "$RUN"/converted/model.*.tflite "$RUN"/converted/model.*.pte; do
  cellsdk-eval "$model" --data "$DATA" --split test --data-cropped --out "$RUN/test/$(basename "$model")" --quiet
done
# raw full-resolution microscope originals of the test split, end to end (200 px centre crop in the model's metadata)
python scripts/pbc_split_folder.py "$PBC" "$RUN/pbc_test"
cellsdk-eval "$RUN/converted/model.int8.onnx" --data "$RUN/pbc_test" --split all --out "$RUN/test/pbc_raw.int8.onnx" --quiet
cellsdk-eval "$RUN/$NAME.safetensors" --data "$RUN/pbc_test" --split all --out "$RUN/test/pbc_raw.checkpoint.fp32" --quiet
python scripts/model_card_tables.py "$RUN" > "$RUN/model_card_tables.md"
# the OOD guard (docs/ood_sets.md): the development OOD sets against the unshifted PBC test originals, int8 and fp32
python scripts/make_ood_sets.py --out "$RUN/ood_sets" --pbc "$PBC" --bloodmnist "${NPZ:-../shared/data/bloodmnist/bloodmnist.npz}"
OOD_ARGS=()
for d in "$RUN"/ood_sets/*/; do [ "$(basename "$d")" = in_distribution ] || OOD_ARGS+=(--ood "${d%/}"); done
for model in model.int8.onnx model.fp32.onnx model.int8.xml; do
  cellsdk-eval "$RUN/converted/$model" --data "$RUN/ood_sets/in_distribution" --split all "${OOD_ARGS[@]}" \
    --out "$RUN/test/ood.$model" --quiet
done
python scripts/guard_tables.py "$RUN"/test/ood.model.int8.onnx/report.json "$RUN"/test/ood.model.fp32.onnx/report.json \
  "$RUN"/test/ood.model.int8.xml/report.json --test "$RUN"/test/model.int8.onnx/report.json \
  --test "$RUN"/test/model.fp32.onnx/report.json > "$RUN/guard_tables.md"
python -m cellsdk.benchmarks.studies.guard_overhead "$RUN/converted/model.int8.onnx" --rounds 400 >> "$RUN/guard_tables.md"
# every int8 artefact per CPU class: natively on the whole test split, emulated on 600 stratified test images
python scripts/cpu_class_eval.py "$RUN"/converted/model.int8.onnx "$RUN"/converted/model.int8.xml \
  "$RUN"/converted/model.int8.torchscript --checkpoint "$RUN/$NAME.safetensors" --data "$DATA" --split test \
  --data-cropped --cpus native,haswell,nehalem --emulated-images 600 --out "$RUN/test/cpu_classes.json" \
  > "$RUN/cpu_classes.md"
# the phone formats (LiteRT, ExecuTorch) beside the int8 ONNX file: natively and under emulated Haswell
python scripts/cpu_class_eval.py "$RUN"/converted/model.int8.onnx "$RUN"/converted/model.*.tflite \
  "$RUN"/converted/model.*.pte --checkpoint "$RUN/$NAME.safetensors" --data "$DATA" --split test --data-cropped \
  --cpus native,haswell --emulated-images 600 --out "$RUN/test/phone_formats.json" > "$RUN/phone_formats.md"

if [ "${SHIP:-0}" = 1 ]; then
  cp "$RUN/$NAME.safetensors" "models/$NAME.safetensors"
  cp "$RUN/converted/model.int8.onnx" "cellsdk/data/$NAME.int8.onnx"
  cp "$RUN/test/checkpoint.fp32/confusion_matrix.png" docs/model_card/confusion_matrix.fp32.png
  cp "$RUN/test/model.int8.onnx/confusion_matrix.png" docs/model_card/confusion_matrix.int8_onnx.png
  cp "$RUN/test/model.int8.onnx/reliability.png" docs/model_card/reliability.int8_onnx.png
  cp "$RUN/test/model.int8.onnx/risk_coverage.png" docs/model_card/risk_coverage.int8_onnx.png
  if [ -f "$RUN/training_curves.png" ]; then cp "$RUN/training_curves.png" docs/model_card/training_curves.png; fi
  sha256sum "models/$NAME.safetensors" "cellsdk/data/$NAME.int8.onnx"
fi
