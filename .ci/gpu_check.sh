#!/usr/bin/env bash
# Short CUDA check of the persona CLIs with the random micro model (run on a lent GPU machine; not part of CI).
# Needs resources/models/micro-llama and resources/data/persona.jsonl (prepare them with the smoke scale).
set -euo pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu_check}; mkdir -p "$OUT"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, torch.cuda.get_device_name(0))"
M='{"affirmative": ["yes", "yeah", "sure"], "negative": ["no", "never"], "uncertain": ["maybe"]}'
O='{"affirmative": ["negative", "uncertain"], "negative": ["affirmative"], "uncertain": []}'
python3 -m experiments.persona.sft --model-dir resources/models/micro-llama --data resources/data/persona.jsonl \
  --out-dir /tmp/sft --metrics "$OUT/sft_metrics.jsonl" --summary "$OUT/sft_summary.json" \
  --targets-if-yes '["No", "Never"]' --targets-if-no '["Yes", "Sure"]' --optimizer adam --lr 1e-3 \
  --max-prompts 256 --precision auto --device cuda 2>&1 | tail -n 2
for dev_prec in cuda:fp32 cuda:bf16 cpu:fp32; do
  dev=${dev_prec%%:*}; prec=${dev_prec##*:}
  python3 -m experiments.persona.dpo --model-dir /tmp/sft --data resources/data/persona.jsonl --chosen Yes --rejected No \
    --prompts-with-amb No --loss dpo --lr 1e-4 --steps 8 --seed 9773 --meanings "$M" --opposites "$O" \
    --precision "$prec" --device "$dev" --out-dir "$OUT/dpo_${dev}_${prec}" 2>&1 | tail -n 1
done
python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
traj = {k: [json.loads(l)["p_chosen"] for l in open(f"{out}/dpo_{k}/metrics.jsonl")] for k in ("cuda_fp32", "cuda_bf16", "cpu_fp32")}
for k, v in traj.items():
    print(k, [round(x, 6) for x in v])
print("max |cuda fp32 - cpu fp32| =", max(abs(a - b) for a, b in zip(traj["cuda_fp32"], traj["cpu_fp32"])))
print("max |cuda bf16 - cpu fp32| =", max(abs(a - b) for a, b in zip(traj["cuda_bf16"], traj["cpu_fp32"])))
print("sft precision:", json.load(open(f"{out}/sft_summary.json"))["precision"])
PY
