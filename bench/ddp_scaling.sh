#!/usr/bin/env bash
# DDP scaling of the real training stage: tokens/s of one Stage 2 run (d=1024, P=6, R=6, seq 1024,
# 32,768 tokens per optimizer step) on 1 GPU and on N GPUs (train.nproc), from the runs' own logs.
#   bash bench/ddp_scaling.sh <tokenizer.model> [N=2] [steps=40]
# Works in a scratch copy (`$WORK`, default /tmp/ddp_scaling) so the repository's outputs are untouched.
set -euo pipefail
TOK=$(realpath "$1"); N=${2:-2}; STEPS=${3:-40}
REPO=$(cd "$(dirname "$0")/.." && pwd); WORK=${WORK:-/tmp/ddp_scaling}
rm -rf "$WORK" && mkdir -p "$WORK" && cp -r "$REPO/cart" "$REPO/pipeline" "$REPO/params.yaml" "$WORK/" && cd "$WORK"
export PYTHONPATH="$WORK:${PYTHONPATH:-}"
python3 - "$TOK" "$STEPS" <<'PY'
import sys, yaml
p = yaml.safe_load(open("params.yaml"))
p["tokenizer"].update(kind="file", file=sys.argv[1])
p["model"].update(head_dim=64, ffn_multiple=256)
p["train"].update(optimizer="adamw8bit", eval_seqs=2, log_every=10, checkpoint_every=100000, deterministic=False)
p["stage2"].update(n_prelude=6, run={"steps": int(sys.argv[2]), "seq_len": 1024, "micro_batch": 16,
                                     "grad_accum": 2, "eval_every": 100000})
yaml.safe_dump(p, open("params.yaml", "w"), sort_keys=False)
PY
python3 -m pipeline.corpus --no-progress && python3 -m pipeline.tokenizer && python3 -m pipeline.bins --no-progress
for n in 1 "$N"; do
  python3 -c "import yaml; p=yaml.safe_load(open('params.yaml')); p['train']['nproc']=$n; yaml.safe_dump(p, open('params.yaml','w'), sort_keys=False)"
  python3 -m pipeline.train stage2 d1024-R6-s42 --no-progress 2>&1 | grep -E "complete|error|Error" || true
  # the last logged interval: after compilation, steady state
  tail -1 plots/stage2/d1024-R6-s42/train.tsv | awk -v n="$n" '{printf "nproc %s: %.0f tok/s (last log interval), mfu %s\n", n, $7, $8}' | tee -a scaling.txt
done
python3 - <<'PY'
rows = [l.split() for l in open("scaling.txt")]
one, many = float(rows[0][2]), float(rows[-1][2])
print(f"DDP scaling: {many / one:.2f}x on {rows[-1][1].rstrip(':')} GPUs ({one:,.0f} -> {many:,.0f} tok/s)")
PY
