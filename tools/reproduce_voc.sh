#!/usr/bin/env bash
# The VOC07+12 reproduction: Faster R-CNN and RetinaNet R50-FPN (mmdet's
# pascal_voc configs), each pruned by GDP to 50 % and 30 % of its FLOPs, fine-tuned,
# evaluated on VOC2007 test, compared with Torch-Pruning's L1 magnitude pruning at
# the same FLOPs, and one table: $WORK/results.md.
#
# Usage: bash tools/reproduce_voc.sh GPUS [--zoo-checkpoints DIR]
#   DIR: mmdet model-zoo checkpoints of the two baselines
#        (faster-rcnn_r50_fpn_1x_voc0712*.pth, retinanet_r50_fpn_1x_voc0712*.pth);
#        without it the baselines are trained first (mmdet's 4-epoch schedule).
# Needs data/VOCdevkit/{VOC2007,VOC2012} (mmdet's layout) under the repository.
# Every run is a tools/dist_gdp_prune_pipeline.sh job with the settings of
# configs/gdp/gdp_*_r50_fpn_1x_voc0712_flops{50,30}.py (min_channels=8,
# channel_divisor=8, a tenth of the baseline's lr, GDP for the baseline's 4 epochs);
# rerunning the script skips every finished stage.
# Environment: WORK (work_dirs/voc0712), GDP_EPOCHS (4), FINETUNE_EPOCHS (4),
# COMPARE (1; 0 skips Torch-Pruning: tools/benchmark_compare.py fine-tunes on one GPU,
# for RetinaNet only, as Torch-Pruning traces a tensor-mode forward that Faster R-CNN
# lacks), PYTHON, PORT and the other variables of tools/dist_train.sh.
set -euo pipefail

die() { echo "reproduce_voc.sh: error: $*" >&2; exit 2; }
usage='usage: bash tools/reproduce_voc.sh GPUS [--zoo-checkpoints DIR]'
[ $# -ge 1 ] || die "give the number of GPUs ($usage)"
GPUS=$1
shift
[[ $GPUS =~ ^[1-9][0-9]*$ ]] || die "GPUS must be a positive number, got '$GPUS' ($usage)"
ZOO=""
while [ $# -gt 0 ]; do
  case $1 in
    --zoo-checkpoints)
      [ $# -ge 2 ] || die "--zoo-checkpoints needs a directory ($usage)"
      ZOO=$2; shift 2 ;;
    *) die "unknown option '$1' ($usage)" ;;
  esac
done

cd "$(dirname "$0")/.."  # mmdet's VOC configs read data/VOCdevkit from here
for f in VOC2007/ImageSets/Main/trainval.txt VOC2007/ImageSets/Main/test.txt \
         VOC2012/ImageSets/Main/trainval.txt; do
  [ -f "data/VOCdevkit/$f" ] || die "data/VOCdevkit/$f not found under $(pwd) (link your \
Pascal VOC 2007+2012 copy there: ln -s /path/to/VOCdevkit data/VOCdevkit)"
done
[ -z "$ZOO" ] || [ -d "$ZOO" ] || die "--zoo-checkpoints $ZOO is not a directory"

WORK=${WORK:-work_dirs/voc0712}
GDP_EPOCHS=${GDP_EPOCHS:-4}
FINETUNE_EPOCHS=${FINETUNE_EPOCHS:-4}
COMPARE=${COMPARE:-1}
export PYTHON=${PYTHON:-python}
if [ "$COMPARE" = 1 ] && ! "$PYTHON" -c 'import torch_pruning' 2>/dev/null; then
  die "the comparison needs Torch-Pruning ($PYTHON -m pip install torch-pruning==1.6.1), or set COMPARE=0"
fi

for DET in faster-rcnn retinanet; do
  NAME=${DET}_r50_fpn_1x_voc0712
  BASE=()
  if [ -n "$ZOO" ]; then
    CKPTS=("$ZOO"/"$NAME"*.pth)  # sorted; the pattern itself when nothing matches
    [ -f "${CKPTS[0]}" ] || die "no ${NAME}*.pth in $ZOO (download it from the mmdet model zoo)"
    BASE=(--baseline-checkpoint "${CKPTS[0]}")
  fi
  for T in 50 30; do
    RUN=$WORK/${DET}_flops$T
    echo "[reproduce_voc] $NAME at 0.$T of the FLOPs -> $RUN"
    bash tools/dist_gdp_prune_pipeline.sh "mmdet::pascal_voc/$NAME.py" "$GPUS" \
      --work-dir "$RUN" --flops-target 0.$T --min-channels 8 --channel-divisor 8 \
      --lr-factor 0.1 --gdp-epochs "$GDP_EPOCHS" --finetune-epochs "$FINETUNE_EPOCHS" \
      "${BASE[@]}"
    if [ -z "$ZOO" ]; then  # the 30 % run starts from the baseline of the 50 % run
      BASE=(--baseline-checkpoint "$("$PYTHON" -c 'import json, sys
print(json.load(open(sys.argv[1]))["checkpoint"])' "$WORK/${DET}_flops50/baseline/stage_done.json")")
    fi
    if [ "$COMPARE" = 1 ] && [ "$DET" = retinanet ]; then
      BASELINE=$("$PYTHON" -c 'import json, os.path as osp, sys
run = json.load(open(osp.join(sys.argv[1], "pipeline.json")))
print(run["baseline_checkpoint"] or json.load(open(osp.join(
    sys.argv[1], "baseline", "stage_done.json")))["checkpoint"])' "$RUN")
      "$PYTHON" tools/benchmark_compare.py "mmdet::pascal_voc/$NAME.py" --config-data \
        --work-dir "$RUN/compare" --baseline-checkpoint "$BASELINE" --patience 0 \
        --methods tp_l1_uniform --budgets 0.$T --seeds 0 \
        --epochs $((GDP_EPOCHS + FINETUNE_EPOCHS)) --gdp-epochs "$GDP_EPOCHS" \
        --out "$RUN/compare.json" --results "$RUN/compare.md" --plot "$RUN/compare.png"
    fi
  done
done

"$PYTHON" - "$WORK" <<'EOF'
import json
import os.path as osp
import sys

work = sys.argv[1]
lines = ['| detector | method | FLOPs ratio | VOC07 test mAP |', '|---|---|---|---|']
for det in ('faster-rcnn', 'retinanet'):
    for target in ('50', '30'):
        run = osp.join(work, f'{det}_flops{target}')
        with open(osp.join(run, 'report.json')) as f:
            rows = json.load(f)['rows']
        tp = osp.join(run, 'compare.json')
        for r in json.load(open(tp))['runs'] if osp.isfile(tp) else []:
            rows.append({'model': 'Torch-Pruning L1 + fine-tune',
                         'FLOPs ratio': r['flops_ratio'], 'mAP': r['mAP']})
        for r in rows[target == '30':]:  # the baseline once per detector
            lines.append(f"| {det} R50-FPN | {r['model']} | {r['FLOPs ratio']:.3f} | "
                         f"{r['mAP']:.4f} |")
with open(osp.join(work, 'results.md'), 'w') as f:
    f.write('\n'.join(lines) + '\n')
print('\n'.join(lines))
print(f'[reproduce_voc] table: {osp.join(work, "results.md")}')
EOF
