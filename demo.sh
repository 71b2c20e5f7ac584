#!/usr/bin/env bash
# End-to-end demo on the embedded synthetic dataset, offline, on CPU (under 5 minutes on 2 cores):
#   01 generate + prepare -> 02 U-Net, 03 Mask R-CNN, 04 DeepMAC (short real training runs, two at a time)
#   -> 05 predict the val split and the test images with all three
#   -> 06 choose the combination + thresholds on val, apply them to test, score, validated submission.csv, report.
#
# Every process runs single-threaded by default (DEMO_THREADS) and DEMO_JOBS (default: 2 if the machine has 2+
# cores) training runs go side by side: on small cores, two one-thread processes get more done than one
# two-thread process on these tiny convolutions, and oversubscribing the cores can cost 10x. Logs: $WORK/logs/.
#
# The images are lib.synthetic's easier 'demo' preset (DEMO_PRESET; bench/quality.py uses the realistic one).
#
# Usage:  bash demo.sh                 (outputs under work/demo, data under data/synthetic_demo)
#         WORK=/tmp/demo bash demo.sh  (every knob below can be set from the environment)
set -euo pipefail
cd "$(dirname "$0")"

WORK="${WORK:-work/demo}"                # everything the demo writes (except the dataset)
PRESET="${DEMO_PRESET:-demo}"            # synthetic images: demo (easier: one figure in a top over pants or a
                                         # skirt, plain background) or realistic (what bench/quality.py uses)
if [ "$PRESET" = demo ]; then DATA="${DATA:-data/synthetic_demo}"; else DATA="${DATA:-data/synthetic}"; fi
                                         # the synthetic Kaggle-layout dataset (generated once, then reused)
PYTHON="${PYTHON:-python}"
LONG_SIDE="${DEMO_LONG_SIDE:-128}"       # prepared / network image size (long side, pixels)
SYN_TRAIN="${DEMO_SYN_TRAIN:-120}"       # synthetic training images (10% go to the val split)
SYN_TEST="${DEMO_SYN_TEST:-12}"          # synthetic test images
UNET_EPOCHS="${DEMO_UNET_EPOCHS:-9}"     # epochs per model (a fixed budget, not a time limit)
MASKRCNN_EPOCHS="${DEMO_MASKRCNN_EPOCHS:-1}"
DEEPMAC_EPOCHS="${DEMO_DEEPMAC_EPOCHS:-1}"
MAX_STEPS="${DEMO_MAX_STEPS:-0}"         # cap on steps per epoch (0 = every training image once per epoch)
BATCH="${DEMO_BATCH:-4}"
NPROC="$(getconf _NPROCESSORS_ONLN 2>/dev/null || echo 1)"
JOBS="${DEMO_JOBS:-$(( NPROC >= 2 ? 2 : 1 ))}"  # training runs side by side (1 or 2)
VAL_IMAGES="${DEMO_VAL_IMAGES:-6}"       # validation images scored at the end of each training run
LOGS="$WORK/logs"
export OMP_NUM_THREADS="${DEMO_THREADS:-1}" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1

t_start=$SECONDS
stage() { printf '\n=== [%3ds] %s\n' "$((SECONDS - t_start))" "$*"; }

# Training flags shared by 02/03/04 (into the array TRAIN); validate once, after the last epoch.
train_args() {
  TRAIN=(--prepared-dir "$WORK/prepared" --out-dir "$WORK/$1" --epochs "$2" --val-every "$2"
         --max-steps-per-epoch "$MAX_STEPS" --batch-size "$BATCH" --workers 0 --warmup-steps 3 --log-every 3
         --max-val-images "$VAL_IMAGES" --val-score-thresh 0.3 --scale-range 0.8 1.0 --seed 0)
}
DET=(--backbone resnet18 --min-size "$LONG_SIDE" --max-size "$LONG_SIDE" --anchor-sizes 16 32 64 128 256
     --rpn-post-nms-train 300 --rpn-pre-nms-test 300 --rpn-post-nms-test 100 --box-batch-size-per-image 64
     --detections-per-img 50 --lr 5e-4)

# run_logged NAME CMD...: run CMD with its output in $LOGS/NAME.log; on failure show the end of the log.
run_logged() {
  local name=$1 t0=$SECONDS
  shift
  echo "    $name: started (log: $LOGS/$name.log)"
  if ! "$@" > "$LOGS/$name.log" 2>&1; then
    echo "    $name: FAILED; the end of $LOGS/$name.log:" >&2
    tail -n 25 "$LOGS/$name.log" >&2
    return 1
  fi
  echo "    $name: done in $((SECONDS - t0)) s"
}

if [ "$PRESET" = demo ]; then
  echo "synthetic images: the easier 'demo' preset (one figure, a top over pants or a skirt, plain background);"
  echo "bench/quality.py measures the models on the 'realistic' preset (1-3 figures, 46 categories, clutter)"
else
  echo "synthetic images: the '$PRESET' preset"
fi
stage "01 generate the synthetic dataset ($PRESET preset, $SYN_TRAIN train / $SYN_TEST test images) and prepare it"
"$PYTHON" 01_prepare_data.py --synthetic --data-dir "$DATA" --out-dir "$WORK/prepared" --long-side "$LONG_SIDE" \
  --synthetic-train "$SYN_TRAIN" --synthetic-test "$SYN_TEST" --synthetic-preset "$PRESET" --processes 2 --no-progress

# Fresh runs each time (the data and the prepared set are reused).
rm -rf "$WORK/unet" "$WORK/maskrcnn" "$WORK/deepmac" "$WORK/predictions" "$WORK/predictions_val" \
  "$WORK/submission" "$LOGS"
mkdir -p "$LOGS"

train_unet() {
  local TRAIN
  train_args unet "$UNET_EPOCHS"
  run_logged 02_train_unet "$PYTHON" 02_train_unet.py "${TRAIN[@]}" --encoder resnet18 --image-size "$LONG_SIDE" \
    --decoder-channels 128 64 32 16 16 --lr 2e-3 --min-area 8
}
train_maskrcnn() {
  local TRAIN
  train_args maskrcnn "$MASKRCNN_EPOCHS"
  run_logged 03_train_maskrcnn "$PYTHON" 03_train_maskrcnn.py "${TRAIN[@]}" "${DET[@]}"
}
train_deepmac() {
  local TRAIN
  train_args deepmac "$DEEPMAC_EPOCHS"
  run_logged 04_train_deepmac "$PYTHON" 04_train_deepmac.py "${TRAIN[@]}" "${DET[@]}" --mask-roi-size 16 \
    --mask-head-depth 2 --mask-head-width 32 --mask-head-stacks 1
}

stage "02/03/04 train from random weights ($JOBS at a time): U-Net (resnet18 encoder, $UNET_EPOCHS epochs),"\
" Mask R-CNN (resnet18 FPN, $MASKRCNN_EPOCHS epochs), DeepMAC (resnet18 FPN + small hourglass head, $DEEPMAC_EPOCHS epochs)"
if [ "$JOBS" -ge 2 ]; then
  ( train_unet ) & lane_a=$!  # the U-Net's longer run on one core, the two detectors on the other
  ( train_maskrcnn && train_deepmac ) & lane_b=$!
  failed=0
  wait "$lane_a" || failed=1
  wait "$lane_b" || failed=1
  [ "$failed" -eq 0 ] || { echo "training failed (see above)" >&2; exit 1; }
else
  train_unet
  train_maskrcnn
  train_deepmac
fi
"$PYTHON" - "$WORK" <<'EOF'
import json, sys
from pathlib import Path

for name in ("unet", "maskrcnn", "deepmac"):
    meta = json.loads((Path(sys.argv[1]) / name / "meta.json").read_text())
    m = meta.get("final_metrics") or {}
    print(f"    {name:<9} {meta['global_step']:>3} steps in {meta['time_s']:>5} s, train loss "
          f"{m.get('train_loss', float('nan')):.3f}, val kaggle {m.get('val_kaggle') or 0:.4f}")
EOF

stage "05 predict the val split (for choosing the combination) and the test images with the three checkpoints"
PREDICT=(--checkpoints "$WORK/unet" "$WORK/maskrcnn" "$WORK/deepmac" --batch-size 4 --workers 0 --restart --no-progress)
"$PYTHON" 05_predict.py "${PREDICT[@]}" --prepared-dir "$WORK/prepared" --split val --out-dir "$WORK/predictions_val"
"$PYTHON" 05_predict.py "${PREDICT[@]}" --data-dir "$DATA" --out-dir "$WORK/predictions"

stage "06 choose models, weights and thresholds on val; apply to test, score on $DATA/test_ground_truth.csv,"\
" write + validate submission.csv, report"
"$PYTHON" 06_make_submission.py --predictions "$WORK/predictions" --tune-on "$WORK/predictions_val" \
  --data-dir "$DATA" --out-dir "$WORK/submission" --no-progress

stage "done in $((SECONDS - t_start)) s"
"$PYTHON" - "$WORK/submission" "$PRESET" <<'EOF'
import json, sys
from pathlib import Path

sub = Path(sys.argv[1])
saved = json.loads((sub / "scores.json").read_text())
print("local scores on the synthetic test set (Kaggle metric / COCO mask AP):")
for name, s in saved["scores"].items():
    label = name if name != "submission" else "submission (" + "+".join(saved["submission"]["models"]) + ")"
    print(f"  {label:<10} kaggle {s['kaggle']:.4f}   mask AP {s['AP']:.4f}")
combo = saved["submission"]
print(f"submission: {sub / 'submission.csv'} (validated; models {combo['models']}, weights "
      f"{[round(w, 2) for w in combo['weights']]}, chosen with the thresholds on the val split)")
report = sub / "report" / "index.html"
print(f"report:     {report}" if report.is_file() else "report:     (not written)")
print(f"Note: these scores are on the synthetic '{sys.argv[2]}' preset's images" + (
      " (one figure in a top over pants or a skirt, plain\n"
      "background): an easier task than the realistic preset (1-3 figures, 46 categories, cluttered backgrounds)\n"
      "that bench/quality.py measures, where the same budget scores near zero." if sys.argv[2] == "demo" else ".")
      + "\nEach model trained for a minute or two of CPU time from random weights (no pretrained backbones offline);\n"
      "the detectors get the fewest steps and score lowest. Train longer, larger or on a GPU for more (README.md).")
EOF
