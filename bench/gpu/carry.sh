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
#   bash bench/gpu/carry.sh bench   # training and the speed levers bench.throughput.train_step measures
#                                   # (pyproject.toml's `bench` extra: torchao, liger-kernel, cut-cross-entropy)
#   bash bench/gpu/carry.sh sweep   # training, the data stages (datasets) and the whole of DVC (dvc init,
#                                   # repro, status, commit, `python -m pipeline.sweep`): bench/gpu/sweep_compare.sh
#
# CARRY_PY=3.11 builds the same set for Python 3.11 (a CPU dry run here, whose Python is 3.11).
# Then carry ".gpu-site" (ignored by git) and put it on PYTHONPATH there (bench/gpu/stage1.sh and
# bench/gpu/profile.sh do). The package lists were found by importing the training stage and the
# evaluation stages in a virtual environment holding only what the image holds; the sweep set's DVC
# part is every package that `pip install --dry-run --report` of dvc==3.67.1 resolves in an empty
# Python 3.12 environment, less those the image holds.
set -euo pipefail
SET=${1:?usage: bash bench/gpu/carry.sh train|eval|bench|sweep [dest=.gpu-site]}
DEST=${2:-.gpu-site}
PY=${CARRY_PY:-3.12}
TRAIN=(bitsandbytes==0.50.2 dvclive==3.49.1 dvc==3.67.1 dvc-render==1.0.2 dvc-studio-client==0.23.0 funcy==2.1
       ruamel.yaml==0.19.1 flatten-dict==0.5.0 voluptuous==0.16.0 submitit==1.5.4)
DATA=(datasets==5.2.0 multiprocess==0.70.19 dill==0.4.1)  # the corpus stage reads local files through datasets
EVAL=("${DATA[@]}" lm-eval==0.4.13)
BENCH=(torchao==0.17.0 liger-kernel==0.8.5 cut-cross-entropy==25.1.1)  # pyproject.toml's `bench` extra
# the rest of dvc's dependencies: its data, task queue (celery), SCM (pygit2, dulwich, GitPython, asyncssh),
# artifact registry (gto, pydantic) and hydra pieces; binary ones for the chosen Python
DVC=(aiohttp-retry==2.9.1 amqp==5.4.2 annotated-types==0.8.0 appdirs==1.4.4 asyncssh==2.24.1 atpublic==9.0.0
     billiard==4.3.2 celery==5.7.0 cffi==2.1.1 click-didyoumean==0.3.1 click-plugins==1.1.1.2 click-repl==0.4.1
     configobj==5.0.9 cryptography==50.0.2 dictdiffer==0.10.0 diskcache==5.6.3 distro==1.9.0 dpath==2.2.0
     dulwich==1.2.21 dvc-data==3.18.3 dvc-http==2.32.0 dvc-objects==5.2.0 dvc-task==0.40.2 entrypoints==0.4.2
     flufl.lock==9.2.0 gitdb==4.0.12 GitPython==3.2.1 grandalf==0.8 gto==1.10.1 hydra-core==1.3.8
     iterative-telemetry==0.0.10 kombu==5.7.0 omegaconf==2.3.1 orjson==3.13.0 platformdirs==4.14.9
     prompt_toolkit==3.0.53 pycparser==3.12 pydantic==2.14.4 pydantic_core==2.50.5 pydantic-settings==2.16.3
     pydot==4.0.1 pygit2==1.21.0 pygtrie==2.6.2 python-dotenv==1.2.4 scmrepo==3.6.2 semver==3.1.2
     shortuuid==1.0.13 shtab==1.13.0 sqltrie==0.11.3 tomlkit==0.15.3 typing-inspection==0.4.5 tzlocal==5.4.5
     vine==5.1.0 wcwidth==0.9.4 zc.lockfile==4.0)
SDIST=()  # pure-Python packages published without a wheel: built into one here
case "$SET" in
  train) WANT=("${TRAIN[@]}") ;;
  eval) WANT=("${TRAIN[@]}" "${EVAL[@]}") ;;
  bench) WANT=("${TRAIN[@]}" "${BENCH[@]}") ;;
  sweep) WANT=("${TRAIN[@]}" "${DATA[@]}" "${DVC[@]}"); SDIST=(antlr4-python3-runtime==4.9.3) ;;  # hydra-core's parser
  *) echo "unknown set $SET: train | eval | bench | sweep" >&2; exit 2 ;;
esac
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
PLATFORMS=()
for p in manylinux_2_34 manylinux_2_28 manylinux_2_26 manylinux_2_24 manylinux_2_17 manylinux2014 manylinux_2_12 \
         manylinux2010 manylinux_2_5 manylinux1; do PLATFORMS+=(--platform "${p}_x86_64"); done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PY" --implementation cp "${PLATFORMS[@]}" \
  -d "$TMP" "${WANT[@]}"
if [ ${#SDIST[@]} -gt 0 ]; then python3 -m pip wheel -q --no-deps -w "$TMP" "${SDIST[@]}"; fi
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
