#!/usr/bin/env bash
# Which distillation term stops the demo's tiny student from learning? SNLI-VE, full condition,
# seeds 0-2: the baseline, MAD with only its image teacher (EfficientNet-Lite0), MAD with only its
# text teacher (MiniLM), and the text teacher at a tenth of the weight. Prints one line per run.
#   bash bench/ablation/run.sh [OUT]        (about 2 minutes on 2 cores; uses the cached world)
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-runs/ablation}
cfg=bench/ablation/snli_ve.yaml
vision='method.teachers={vision: {kind: vision, pretrained: efficientnet-lite0, image_size: 128}}'
text='method.teachers={text: {kind: text, pretrained: minilm}}'
run() {  # name, then overrides
  local name=$1; shift
  for seed in 0 1 2; do
    acc=$(.venv/bin/vldistill train "$cfg" --out "$out/$name/seed$seed" --overwrite --set train.seed=$seed "$@" --no-progress \
          | sed -n 's/^eval: accuracy = //p')
    task=$(python3 -c "import json,sys; r=[json.loads(l) for l in open(sys.argv[1])][-1]; print(round(r['train_task'],3))" \
          "$out/$name/seed$seed/metrics.jsonl")
    echo "$name seed $seed: accuracy $acc, final train task loss $task"
  done
}
run none
run image-only --set method.name=mad --set "$vision"
run text-only --set method.name=mad --set "$text"
run text-only-0.1 --set method.name=mad --set "$text" --set method.feature_weight=0.1
