#!/usr/bin/env bash
# DDP scaling of the real training stage: tokens/s of one Stage 2 run (d=1024, P=6, seq 1024,
# 32,768 tokens per optimizer step) on 1 GPU and on N GPUs (train.nproc), from the runs' own logs.
#   bash bench/gpu/ddp_scaling.sh <tokenizer.model> [N=2] [steps=40] [model=cart|dense] [setting ...]
# Each `setting` (key=value of the train section, e.g. ddp_bucket_cap_mb=100
# ddp_gradient_as_bucket_view=true) is one more N-GPU row: the lever, against the default N-GPU row.
# On N > 1 GPUs an FSDP2 row (data_parallel=fsdp2: fully_shard per block, torch's defaults otherwise)
# always follows the default DDP row; every row starts from the DDP defaults, so levers stay apart.
# Works in a scratch copy (`$WORK`, default /tmp/ddp_scaling) so the repository's outputs are
# untouched; every row trains from a fresh run directory (a finished run would be skipped) and the
# table goes to $WORK/scaling.tsv (`$OUT/ddp_scaling_<model>.tsv` too when OUT is set).
# D_MODEL / SEQ_LEN / MICRO_BATCH / OPTIMIZER (default 1024 / 1024 / 16 / adamw8bit) shrink it for a
# CPU dry run (gloo, OPTIMIZER=adamw).
set -euo pipefail
TOK=$(realpath "$1"); N=${2:-2}; STEPS=${3:-40}; MODEL=${4:-cart}; shift $(( $# < 4 ? $# : 4 ))
[ -f "$TOK" ] || { echo "ddp_scaling: tokenizer model $1 not found (give a SentencePiece .model file)" >&2; exit 2; }
REPO=$(cd "$(dirname "$0")/../.." && pwd); WORK=${WORK:-/tmp/ddp_scaling}
rm -rf "$WORK" && mkdir -p "$WORK" && cp -r "$REPO/cart" "$REPO/pipeline" "$REPO/params.yaml" "$WORK/" && cd "$WORK"
export PYTHONPATH="$WORK:${PYTHONPATH:-}"
D=${D_MODEL:-1024}
python3 - "$TOK" "$STEPS" "$D" "${SEQ_LEN:-1024}" "${MICRO_BATCH:-16}" "${OPTIMIZER:-adamw8bit}" <<'PY'
import sys, yaml
d, seq, mb = (int(a) for a in sys.argv[3:6])
p = yaml.safe_load(open("params.yaml"))
p["tokenizer"].update(kind="file", file=sys.argv[1])
p["model"]["common"].update(head_dim=64, ffn_multiple=256)
p["train"].update(optimizer=sys.argv[6], eval_seqs=2, log_every=10, checkpoint_every=100000, deterministic=False)
p["stage2"].update(n_prelude=6, run={"steps": int(sys.argv[2]), "seq_len": seq, "micro_batch": mb,
                                     "grad_accum": 2, "eval_every": 100000})
p["stage2"]["grid"].update(d_model=[d], n_loops=[6], seed=[42])
p["dense"].update(d_model=d)
p["dense"]["grid"].update(n_layers=[7], seed=[42])
yaml.safe_dump(p, open("params.yaml", "w"), sort_keys=False)
PY
python3 -m pipeline.corpus --no-progress && python3 -m pipeline.tokenizer && python3 -m pipeline.bins --no-progress
if [ "$MODEL" = dense ]; then GROUP=dense RUN=L7-s42; else GROUP=stage2 RUN=d$D-R6-s42; fi
printf "model\tnproc\tsetting\ttokens_per_s\tmfu_per_gpu\n" > scaling.tsv
row() {  # row <nproc> <setting or "default">
  python3 - "$1" "$2" <<'PY'
import sys, yaml
p = yaml.safe_load(open("params.yaml"))
p["train"].update(nproc=int(sys.argv[1]), ddp_bucket_cap_mb=25, ddp_gradient_as_bucket_view=False,
                  zero_optimizer=False, data_parallel="ddp")
if sys.argv[2] != "default":
    for kv in sys.argv[2].split(","):
        k, v = kv.split("=")
        if k not in p["train"]:
            sys.exit(f"ddp_scaling: {k} is not a train setting; valid: {sorted(p['train'])}")
        p["train"][k] = yaml.safe_load(v)
yaml.safe_dump(p, open("params.yaml", "w"), sort_keys=False)
PY
  rm -rf "runs/$GROUP/$RUN" "plots/$GROUP/$RUN" "metrics/$GROUP/$RUN.json"   # a fresh run every row
  python3 -m pipeline.train "$GROUP" "$RUN" --no-progress > "train_$1_$2.log" 2>&1 \
    || { tail -5 "train_$1_$2.log" >&2; echo "ddp_scaling: the nproc=$1 ($2) run failed" >&2; exit 1; }
  # the run's steady-state tokens/s (median logged interval after the first) and per-GPU mfu
  python3 - "$1" "$2" "metrics/$GROUP/$RUN.json" "$MODEL" <<'PY' | tee -a scaling.tsv
import json, sys
m = json.load(open(sys.argv[3]))
print(f"{sys.argv[4]}\t{sys.argv[1]}\t{sys.argv[2]}\t{m['tokens_per_s']:.0f}\t{m['mfu']}")
PY
}
row 1 default
[ "$N" = 1 ] || row "$N" default  # one GPU: the levers against the 1-GPU row
[ "$N" = 1 ] || row "$N" data_parallel=fsdp2
for s in "$@"; do row "$N" "$s"; done
python3 - "$N" <<'PY'
import csv, sys
rows = list(csv.DictReader(open("scaling.tsv"), delimiter="\t"))
one = float(rows[0]["tokens_per_s"])
for r in rows[1:]:
    print(f"Scaling {r['model']} on {r['nproc']} GPUs ({r['setting']}): {float(r['tokens_per_s']) / one:.2f}x "
          f"({one:,.0f} -> {float(r['tokens_per_s']):,.0f} tok/s), mfu per GPU {r['mfu_per_gpu']}")
PY
if [ -n "${OUT:-}" ]; then cp scaling.tsv "$OUT/ddp_scaling_$MODEL.tsv"; fi
