#!/usr/bin/env bash
# Build .gpu-site/: the Python packages the GPU machine's image lacks, for Python 3.12 there (torch,
# numpy, pandas, scipy, sentencepiece, safetensors, transformers, requests, tqdm ... are in the image;
# KINDS.md of the device tool lists them). Pure-Python wheels are unpacked; bitsandbytes keeps only
# its CUDA 13.0 library (the image's torch is cu130): ~5 MB instead of ~43 MB, under the 64 MiB a
# device call carries.
#
#   bash bench/gpu/carry.sh train   # training: bitsandbytes, dvclive and the dvc modules it imports,
#                                   # submitit (bench/gpu/job.py's job engine; cloudpickle is in the image)
#   bash bench/gpu/carry.sh eval    # and evaluation: datasets, lm-eval (its own task folders dropped:
#                                   # the project's tasks are used), their dependencies
#
# Then carry ".gpu-site" (ignored by git) and put it on PYTHONPATH there (bench/gpu/stage1.sh and
# bench/gpu/profile.sh do). The package lists were found by importing the training stage and the
# evaluation stages in a virtual environment holding only what the image holds.
set -euo pipefail
SET=${1:?usage: bash bench/gpu/carry.sh train|eval [dest=.gpu-site]}
DEST=${2:-.gpu-site}
TRAIN=(bitsandbytes==0.50.2 dvclive==3.49.1 dvc==3.67.1 dvc-render==1.0.2 dvc-studio-client==0.23.0 funcy==2.1
       ruamel.yaml==0.19.1 flatten-dict==0.5.0 voluptuous==0.16.0 submitit==1.5.4)
EVAL=(datasets==5.2.0 multiprocess==0.70.19 dill==0.4.1 lm-eval==0.4.13)
case "$SET" in
  train) WANT=("${TRAIN[@]}") ;;
  eval) WANT=("${TRAIN[@]}" "${EVAL[@]}") ;;
  *) echo "unknown set $SET: train | eval" >&2; exit 2 ;;
esac
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$TMP" "${WANT[@]}"
rm -rf "$DEST" && mkdir -p "$DEST"
python3 - "$TMP" "$DEST" <<'PY'
import glob, re, sys, zipfile
src, dest = sys.argv[1:]
for whl in sorted(glob.glob(f"{src}/*.whl")):
    with zipfile.ZipFile(whl) as z:
        for name in z.namelist():
            if re.search(r"libbitsandbytes_(cuda(?!130)|rocm|xpu)", name):  # other CUDA, ROCm, XPU builds
                continue
            if re.match(r"lm_eval/tasks/[^/]+/", name):  # lm-eval's own tasks (the project has its own)
                continue
            z.extract(name, dest)
PY
du -sh "$DEST"
