#!/usr/bin/env bash
# The GPU benchmarks as self-contained device calls (never tests): each part writes
# its JSON/TSV and log under $OUT (default ./out). Carry .gpu-site (bitsandbytes, liger-kernel,
# torchao, cut-cross-entropy: see docs/gpu.md) and .gpu-data (the Llama-2 tokenizer.model and wiki_5m.bin,
# the first 5M Llama-2 tokens of ../shared/data/wikipedia's articles, each ended by EOS, as uint16).
# .gpu-site: bash bench/gpu/carry.sh bench (bitsandbytes and pyproject.toml's `bench` extra; with .gpu-data's
# 11 MB under the 64 MiB a call carries).
# .gpu-data: SHARED=../shared bash bench/gpu/perf.sh data, here (not on the GPU machine: ../shared stays here).
#   bash bench/gpu/perf.sh decode     # bench.throughput.decode: cached vs uncached greedy decoding
#   bash bench/gpu/perf.sh decode_batch   # the same at batch 1 in another order, and at batch 32
#   bash bench/gpu/perf.sh decode_fresh   # one process per config and batch (1, 32)
#   bash bench/gpu/perf.sh sampled    # bench.throughput.train_step: sampled-R compile cost vs fixed R
#   bash bench/gpu/perf.sh levers     # bench.throughput.train_step: fused loss and FP8 against the training step
#   bash bench/gpu/perf.sh sweep      # bench.throughput.train_step: every paper-profile Stage 2 config + the sweep projection
#   bash bench/gpu/perf.sh ddp [N]    # bench/gpu/ddp_scaling.sh: 1 vs N GPUs, DDP bucket levers, ZeRO, FSDP2
#   bash bench/gpu/perf.sh graph_decode   # tests/test_gpu.py, then bench.throughput.decode with CUDA-graph decoding, batch 1 and 32
#   bash bench/gpu/perf.sh parity     # fp8 against bf16: 300 steps on real tokens (.gpu-data/wiki_5m.bin), loss of the last 20
#   bash bench/gpu/perf.sh small      # CART d256: CUDA graphs over the compiled step; torch's fused AdamW vs 8-bit AdamW
#   bash bench/gpu/perf.sh profile    # the top GPU kernels of a training step: CART d1024 R6, CART d256 R6, Dense 7L
#   bash bench/gpu/perf.sh pack       # sweep packing: 1, 2 and 4 CART d256 runs at once on one GPU, summed tok/s (PACK_MPS=1: under MPS)
#   bash bench/gpu/perf.sh decode_profile   # bench.throughput.decode_profile: new shapes vs seen ones, where a decoding step goes
#   bash bench/gpu/perf.sh combos     # bench.throughput.train_step: levers alone and combined (graphs+fused_adamw+...), d256, d1024, Dense 7L
#   bash bench/gpu/perf.sh combo_parity   # $PARITY_LEVERS against base: 300 steps on real tokens, CART d1024 R6
#   bash bench/gpu/perf.sh train_levers   # the training stage itself (1 GPU, CART d1024 R6) with $TRAIN_SETTINGS
#   bash bench/gpu/perf.sh heads      # Cut Cross-Entropy (cce, cce_exact) on real tokens: speed and 300-step parity at once
#   bash bench/gpu/perf.sh fp8_combos # fp8 with graphs+fused_adamw, CART d1024 R6 and Dense 7L
#   bash bench/gpu/perf.sh fp8_parity # the same on real tokens, 300 steps (loss parity)
#   bash bench/gpu/perf.sh inductor_calls   # bench.throughput.inductor_calls: extern kernels and aten fallbacks of the compiled step
#   bash bench/gpu/perf.sh autotune   # Inductor max-autotune GEMM templates, with and without CUDA graphs, d256 and d1024
#   bash bench/gpu/perf.sh ce         # bench.throughput.ce_kernels: cross-entropy formulations alone, forward + backward, top kernels
#   bash bench/gpu/perf.sh real300    # graphs+fused_adamw, 300 steps on real tokens: d256, d1024, Dense 7L (speed and loss)
# SWEEP_LEVERS / PACK_LEVERS / PROFILE_LEVERS (default base) pick the levers the sweep / pack / profile parts run with (SWEEP_CONFIGS: a
# subset of the sweep's configs, for a second call when one call's 10 minutes end before the last config; then `python -m
# bench.throughput.train_step --project first.json second.json` prints the projection of both); DDP_SETTINGS the
# train settings of the ddp part's extra rows (default: bigger buckets, then those with a sharded optimizer).
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ "${1:-}" = data ]; then  # .gpu-data from the shared data folder; no GPU
  SHARED=${SHARED:-../shared}; mkdir -p .gpu-data
  cp "$SHARED/data/tokenizer/llama2_tokenizer.model" .gpu-data/
  python3 - "$SHARED/data/wikipedia/enwiki_2015_articles.jsonl.xz" <<'PY'
import json, lzma, sys
import numpy as np
import sentencepiece as spm
sp, ids, n = spm.SentencePieceProcessor(model_file=".gpu-data/llama2_tokenizer.model"), [], 0
with lzma.open(sys.argv[1], "rt") as f:
    for line in f:  # the first articles, in file order, each ended by EOS, until 5M tokens
        ids.append(np.array(sp.encode(json.loads(line)["text"]) + [sp.eos_id()], dtype=np.uint16))
        n += len(ids[-1])
        if n >= 5_000_000:
            break
np.concatenate(ids)[:5_000_000].tofile(".gpu-data/wiki_5m.bin")
PY
  ls -l .gpu-data; exit 0
fi
OUT=${OUT:-out}; mkdir -p "$OUT"
export PYTHONPATH="$PWD/.gpu-site:$PWD:${PYTHONPATH:-}"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/device.txt"
python3 -c "import torch; print('torch', torch.__version__)" | tee -a "$OUT/device.txt"
for part in "$@"; do
  case "$part" in
    decode)
      timeout 240 python3 -m bench.throughput.decode --out "$OUT/decode.json" 2>&1 | tee "$OUT/decode.log" ;;
    decode_batch)  # the same at batch 1 (configs twice, in another order) and at batch 32
      timeout 200 python3 -m bench.throughput.decode --configs dense-L12-d1024 cart-d1024-R6 dense-L7-d1024 cart-d1024-R6 \
        --out "$OUT/decode_b1.json" 2>&1 | tee "$OUT/decode_b1.log"
      timeout 240 python3 -m bench.throughput.decode --batch 32 --out "$OUT/decode_b32.json" 2>&1 | tee "$OUT/decode_b32.log" ;;
    decode_fresh)  # one process per config and batch: no config runs after another in the same process
      for b in 1 32; do for c in cart-d1024-R6 dense-L12-d1024; do
        timeout 100 python3 -m bench.throughput.decode --batch "$b" --configs "$c" --out "$OUT/decode_${c}_b$b.json" \
          2>&1 | tee -a "$OUT/decode_fresh.log"
      done; done ;;
    sampled)
      timeout 300 python3 -m bench.throughput.train_step --configs cart-d1024-R6 --micro-batch 32 --steps 60 --warmup 10 \
        --loop-sampling uniform poisson_lognormal --out "$OUT/sampled_r.json" 2>&1 | tee "$OUT/sampled_r.log" ;;
    levers)
      timeout 420 python3 -m bench.throughput.train_step --configs cart-d1024-R6 dense-L7 cart-d256-R6 --micro-batch 32 \
        --steps 20 --warmup 5 --levers base fused_loss fp8 --out "$OUT/levers.json" 2>&1 | tee "$OUT/levers.log" ;;
    sweep)
      timeout ${SWEEP_TIMEOUT:-540} python3 -m bench.throughput.train_step ${SWEEP_CONFIGS:+--configs $SWEEP_CONFIGS} --micro-batch 32 --steps 10 --warmup 3 \
        --levers ${SWEEP_LEVERS:-base} --out "$OUT/bench_gpu.json" 2>&1 | tee "$OUT/bench_gpu.log" ;;
    combos)
      timeout 240 python3 -m bench.throughput.train_step --configs cart-d256-R6 --micro-batch 32 --steps 40 --warmup 10 \
        --levers base graphs fused_adamw graphs+fused_adamw fused_adamw+fused_loss graphs+fused_adamw+fused_loss \
        --out "$OUT/combos_d256.json" 2>&1 | tee "$OUT/combos_d256.log"
      timeout 300 python3 -m bench.throughput.train_step --configs cart-d1024-R6 dense-L7 --micro-batch 32 --steps 30 --warmup 8 \
        --levers base graphs+fused_adamw graphs+fused_adamw+fused_loss \
        --out "$OUT/combos_d1024.json" 2>&1 | tee "$OUT/combos_d1024.log" ;;
    combo_parity)
      timeout 420 python3 -m bench.throughput.train_step --configs cart-d1024-R6 --micro-batch 32 --steps 300 --warmup 5 \
        --levers base ${PARITY_LEVERS:-graphs+fused_adamw} --data .gpu-data/wiki_5m.bin --out "$OUT/combo_parity.json" \
        2>&1 | tee "$OUT/combo_parity.log" ;;
    train_levers)
      OUT="$(realpath "$OUT")" WORK=/tmp/train_levers timeout 540 bash bench/gpu/ddp_scaling.sh \
        .gpu-data/llama2_tokenizer.model 1 40 cart ${TRAIN_SETTINGS:-compile_mode=reduce-overhead,optimizer=adamw} \
        2>&1 | tee "$OUT/train_levers.log" ;;
    heads)  # real tokens: cce's gradient filter skips work by the softmax, so random tokens would flatter it
      for c in "cart-d256-R6 300 base graphs+fused_adamw graphs+fused_adamw+cce graphs+fused_adamw+cce_exact" \
               "cart-d1024-R6 300 base graphs+fused_adamw graphs+fused_adamw+cce" \
               "dense-L7 60 graphs+fused_adamw graphs+fused_adamw+cce"; do
        set -- $c
        timeout 330 python3 -m bench.throughput.train_step --configs "$1" --micro-batch 32 --steps "$2" --warmup 8 \
          --levers "${@:3}" --data .gpu-data/wiki_5m.bin --out "$OUT/heads_$1.json" 2>&1 | tee "$OUT/heads_$1.log" || true
      done ;;
    fp8_combos)  # fp8 on top of the kept levers (measured alone, docs/performance.md: +2.5% CART d1024, +4.6% Dense 7L)
      timeout 330 python3 -m bench.throughput.train_step --configs cart-d1024-R6 dense-L7 --micro-batch 32 --steps 30 --warmup 8 \
        --levers graphs+fused_adamw graphs+fused_adamw+fp8 --out "$OUT/fp8_combos.json" 2>&1 | tee "$OUT/fp8_combos.log" ;;
    inductor_calls)  # what the compiled training step calls besides Inductor's own kernels (extern kernels, aten fallbacks)
      for c in ${PROFILE_CONFIGS:-cart-d256-R6}; do
        timeout 240 python3 -m bench.throughput.inductor_calls --config "$c" 2>&1 | tee "$OUT/inductor_calls_$c.log" | tail -25
      done ;;
    fp8_parity)  # the same pair on real tokens, 300 steps: speed and the loss of the last 20 steps at once
      timeout 420 python3 -m bench.throughput.train_step --configs cart-d1024-R6 dense-L7 --micro-batch 32 --steps 300 --warmup 8 \
        --levers graphs+fused_adamw graphs+fused_adamw+fp8 --data .gpu-data/wiki_5m.bin --out "$OUT/fp8_parity.json" \
        2>&1 | tee "$OUT/fp8_parity.log" ;;
    autotune)
      for c in ${AUTOTUNE_CONFIGS:-cart-d256-R6 cart-d1024-R6}; do
        timeout ${AUTOTUNE_TIMEOUT:-270} python3 -m bench.throughput.train_step --configs "$c" --micro-batch 32 --steps 30 --warmup 8 \
          --levers graphs+fused_adamw fused_adamw+autotune graphs+fused_adamw+autotune \
          --out "$OUT/autotune_$c.json" 2>&1 | tee "$OUT/autotune_$c.log" || true
      done ;;
    ddp)
      n=$(nvidia-smi -L | wc -l)
      for model in ${DDP_MODELS:-cart dense}; do
        OUT="$(realpath "$OUT")" WORK=/tmp/ddp_$model timeout 360 bash bench/gpu/ddp_scaling.sh .gpu-data/llama2_tokenizer.model \
          "$n" 40 "$model" ${DDP_SETTINGS:-ddp_bucket_cap_mb=100,ddp_gradient_as_bucket_view=true \
          ddp_bucket_cap_mb=100,ddp_gradient_as_bucket_view=true,zero_optimizer=true} \
          2>&1 | tee "$OUT/ddp_$model.log"
      done ;;
    graph_decode)
      if python3 -c "import pytest" 2>/dev/null; then
        python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py 2>&1 | tee "$OUT/test_gpu.log"
      else  # no pytest on the image: call the CUDA-graph test directly
        python3 -c "import tests.test_gpu as t
for f in ({}, {'unfreeze_kv': True}, {'self_attn_core': True}, 'dense'):
    t.test_cuda_graph_decoding_equals_the_eager_cache(f); print('passed', f)" 2>&1 | tee "$OUT/test_gpu.log"
      fi
      for b in 1 32; do
        timeout 200 python3 -m bench.throughput.decode --batch "$b" --configs ${DECODE_CONFIGS:-cart-d1024-R6 dense-L12-d1024} \
          --out "$OUT/decode_graph_b$b.json" 2>&1 | tee "$OUT/decode_graph_b$b.log"
      done ;;
    ce)
      timeout 240 python3 -m bench.throughput.ce_kernels --out "$OUT/ce_kernels.json" 2>&1 | tee "$OUT/ce_kernels.log" ;;
    real300)  # one process; REAL300_TAG names the files (A/B of a code change: run it once per version)
      name="real300${REAL300_TAG:+_$REAL300_TAG}"
      timeout 280 python3 -m bench.throughput.train_step --configs cart-d256-R6 cart-d1024-R6 dense-L7 --micro-batch 32 --steps 300 \
        --warmup 8 --levers graphs+fused_adamw --data .gpu-data/wiki_5m.bin \
        --out "$OUT/$name.json" 2>&1 | tee "$OUT/$name.log" ;;
    decode_profile)
      timeout 200 python3 -m bench.throughput.decode_profile 2>&1 | tee "$OUT/decode_profile.log" ;;
    parity)
      timeout 420 python3 -m bench.throughput.train_step --configs cart-d1024-R6 --micro-batch 32 --steps 300 --warmup 5 \
        --levers base fp8 --data .gpu-data/wiki_5m.bin --out "$OUT/parity.json" 2>&1 | tee "$OUT/parity.log" ;;
    small)
      for mode in default reduce-overhead; do
        timeout 150 python3 -m bench.throughput.train_step --configs cart-d256-R6 --micro-batch 32 --steps 40 --warmup 10 \
          $([ "$mode" = default ] || echo --compile-mode "$mode") --out "$OUT/small_$mode.json" 2>&1 | tee -a "$OUT/small.log"
      done
      timeout 150 python3 -m bench.throughput.train_step --configs cart-d256-R6 --micro-batch 32 --steps 40 --warmup 10 \
        --optimizer adamw --out "$OUT/small_fused_adamw.json" 2>&1 | tee -a "$OUT/small.log" ;;
    profile)
      for c in ${PROFILE_CONFIGS:-cart-d1024-R6 cart-d256-R6 dense-L7}; do
        timeout 150 python3 -m bench.throughput.train_step --configs "$c" --micro-batch 32 --steps 10 --warmup 5 --profile \
          --levers ${PROFILE_LEVERS:-base} \
          --out "$OUT/profile_$c.json" 2>&1 | tee "$OUT/profile_$c.log"
      done ;;
    pack)  # PACK_MPS=1: under CUDA MPS (a user-space daemon started here and quit when the part ends; no GPU setting changes),
      # so the processes' kernels can run side by side instead of taking turns; files then end in _mps. PACK_NS (1 2 4),
      # PACK_CONFIG (cart-d256-R6) and PACK_STEPS (60) pick the run counts, the config and the timed steps
      tag=
      if [ "${PACK_MPS:-0}" = 1 ]; then
        tag=_mps
        export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps_pipe CUDA_MPS_LOG_DIRECTORY=/tmp/mps_log
        mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
        mps_quit() { echo quit | nvidia-cuda-mps-control; sleep 2; cp -r "$CUDA_MPS_LOG_DIRECTORY" "$OUT/mps_log"; }
        nvidia-cuda-mps-control -d
        trap mps_quit EXIT
      fi
      for n in ${PACK_NS:-1 2 4}; do
        rm -rf "/tmp/pack_$n"
        for i in $(seq "$n"); do
          timeout 240 python3 -m bench.throughput.train_step --configs ${PACK_CONFIG:-cart-d256-R6} --micro-batch 32 --steps ${PACK_STEPS:-60} \
            --warmup 10 --levers ${PACK_LEVERS:-base} --barrier "/tmp/pack_$n,$n" --out "$OUT/pack${tag}_${n}_$i.json" \
            > "$OUT/pack${tag}_${n}_$i.log" 2>&1 &
        done
        wait
        python3 -c "import glob, json, sys
rows = [json.load(open(f))['rows'][0] for f in sorted(glob.glob('$OUT/pack${tag}_${n}_*.json'))]
print(f'pack${tag} $n: ' + ' + '.join(f\"{r['tokens_per_s']:,.0f}\" for r in rows) + f\" = {sum(r['tokens_per_s'] for r in rows):,.0f} tok/s, paper-MFU {sum(r['mfu_paper'] for r in rows):.1%}\")" \
          | tee -a "$OUT/pack${tag}.log"
      done
      if [ -n "$tag" ]; then  # the parts after this one run without MPS
        mps_quit; trap - EXIT
        unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
      fi ;;
    *) echo "gpu_perf: unknown part $part (decode, decode_batch, decode_fresh, sampled, levers, sweep, ddp," \
            "graph_decode, decode_profile, parity, small, profile, pack, combos, combo_parity, train_levers, heads, fp8_combos, fp8_parity," \
            "inductor_calls," \
            "autotune, ce, real300)" >&2; exit 2 ;;
  esac
done
