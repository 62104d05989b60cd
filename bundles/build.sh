#!/usr/bin/env bash
# `make bundles`: small settings a 2-core CPU finishes in minutes. For each bundle: verify the metadata (offline, our
# schema) and the network I/O, write synthetic data, train the dense model, compress it with monai-prune's recipe,
# evaluate both, run inference with both, and export both to TorchScript (model.ts, what MONAI Deploy loads). Every
# step is a stock `python -m monai.bundle` command run from the bundle folder; the full-size settings are the
# configs' defaults (see each bundle's docs/README.md).
set -euo pipefail
PY=${PY:-python}
HERE=$(cd "$(dirname "$0")" && pwd)
SCHEMA="$HERE/schema/meta_schema.json"
RECIPE=$("$PY" -c "import monai_prune, os; print(os.path.join(os.path.dirname(monai_prune.__file__), 'recipes', 'channel_pruning_kd.json'))")
run() { echo "+ $*"; "$@"; }
evaluate_infer_export() {  # $1: the small settings (one word list), then the inference overrides; dense and compressed
    local small infer=("${@:2}")
    read -r -a small <<< "$1"
    run "$PY" -m monai.bundle run --config_file "['configs/train.json','configs/evaluate.json']" "${small[@]}"
    run "$PY" -m monai.bundle run --config_file "['configs/train.json','configs/evaluate.json','configs/use_compressed.json']" \
        "${small[@]}"
    run "$PY" -m monai.bundle run --config_file configs/inference.json "${infer[@]}"
    run "$PY" -m monai.bundle run --config_file "['configs/inference.json','configs/use_compressed.json']" "${infer[@]}"
    run "$PY" -m monai.bundle ckpt_export network --filepath models/model.ts --ckpt_file models/model.pt \
        --meta_file configs/metadata.json --config_file configs/inference.json
    run "$PY" -m monai.bundle ckpt_export network --filepath models/compressed/model.ts \
        --ckpt_file models/compressed/model.pt --meta_file configs/metadata.json \
        --config_file "['configs/inference.json','configs/use_compressed.json']"
}
summary() {  # dense vs compressed: MACs/params from the plan, metrics from the evaluations
    "$PY" - "$1" <<'PYEOF'
import json, sys
stats = json.load(open("models/compressed/plan.json"))["stats"]
print(f"== {sys.argv[1]}: MACs at prune#input_shape {stats['macs_before'] / 1e9:.3f} G -> {stats['macs_after'] / 1e9:.3f} G, "
      f"params {stats['params_before'] / 1e6:.2f} M -> {stats['params_after'] / 1e6:.2f} M")
for name, path in (("dense", "eval/metrics.csv"), ("compressed", "eval/compressed/metrics.csv")):
    print(f"== {sys.argv[1]} {name}: " + ", ".join(line.strip().replace(",", " ") for line in open(path)))
PYEOF
}

cd "$HERE/spleen_ct_segmentation_compressed"
SEG_SMALL=(--roi_size "[48,48,48]" --num_samples 2)
run "$PY" -m monai.bundle verify_metadata --meta_file configs/metadata.json --filepath "$SCHEMA"
run "$PY" -m monai.bundle verify_net_in_out network --meta_file configs/metadata.json --config_file configs/inference.json
run "$PY" scripts/make_synthetic_data.py --train 6 --val 2 --test 2 --size 64
run "$PY" -m monai.bundle run --config_file configs/train.json --epochs 10 --val_interval 2 "${SEG_SMALL[@]}"
run "$PY" -m monai.bundle run --config_file "['configs/train.json','$RECIPE','configs/compress.json']" \
    --epochs 5 --prune#start_epoch 0 --prune#end_epoch 2 "${SEG_SMALL[@]}"
evaluate_infer_export "${SEG_SMALL[*]}" --roi_size "[48,48,48]"  # inference at the training patch size
summary spleen_ct_segmentation_compressed

cd "$HERE/chest_xray_classification_compressed"
CXR_SMALL=(--image_size "[96,96]" --batch_size 8)
run "$PY" -m monai.bundle verify_metadata --meta_file configs/metadata.json --filepath "$SCHEMA"
run "$PY" -m monai.bundle verify_net_in_out network --meta_file configs/metadata.json --config_file configs/inference.json
run "$PY" scripts/make_synthetic_data.py --train 48 --val 16 --test 4 --size 96
run "$PY" -m monai.bundle run --config_file configs/train.json --epochs 12 "${CXR_SMALL[@]}"
run "$PY" -m monai.bundle run --config_file "['configs/train.json','$RECIPE','configs/compress.json']" \
    --epochs 6 --prune#start_epoch 0 --prune#end_epoch 2 "${CXR_SMALL[@]}"
evaluate_infer_export "${CXR_SMALL[*]}" --image_size "[96,96]"
summary chest_xray_classification_compressed
