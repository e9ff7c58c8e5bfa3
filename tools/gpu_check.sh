#!/usr/bin/env bash
# The device check (issue 16), prepared so that a session with a lent GPU runs it as is: the gpu-marked
# tests, tools/bench.py on CUDA at 32x32 (CIFAR-like) and 224x224 (ImageNet-like) for full fine-tuning
# and each strategy family with bf16 + channels_last against the plain-PyTorch loop, and the loader alone
# against training. Prints markdown (and writes the bench tables to $OUT, or a temporary folder).
# Budget: under 5 minutes on one H100; each part has its own time limit, so a slow part cannot eat the rest.
#
# The GPU machine has torch, timm, accelerate, peft, torchvision, pyarrow and pandas, but not `datasets`
# (nor dill and multiprocess), and no network. Their wheels travel in .whl/ (git-ignored):
#   here, with network, once:     bash tools/gpu_check.sh --fetch-wheels
#   on the GPU (carry .whl):      bash tools/gpu_check.sh
# The script installs the wheels (into /tmp, --no-index) only when the packages are missing, and says so.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WHEELS=.whl
NEEDED="datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19"  # datasets and what it needs beyond the GPU image

if [ "${1:-}" = "--fetch-wheels" ]; then  # the GPU image's Python is 3.12 on x86-64
    exec $PY -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d "$WHEELS" $NEEDED
fi

OUTDIR=${OUT:-$(mktemp -d)}
echo "# GPU check, $(date -u '+%Y-%m-%d %H:%M UTC')"
echo
missing=$($PY -c "import importlib.util as u; print(' '.join(m for m in ('datasets', 'dill', 'multiprocess') if u.find_spec(m) is None))")
if [ -n "$missing" ]; then
    if ! ls "$WHEELS"/*.whl >/dev/null 2>&1; then
        echo "Missing here: $missing, and no wheels in $WHEELS/: run 'bash tools/gpu_check.sh --fetch-wheels' where pip has network, and carry $WHEELS."
        exit 2
    fi
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/partial_ft_site "$WHEELS"/*.whl || exit 2
    export PYTHONPATH="/tmp/partial_ft_site${PYTHONPATH:+:$PYTHONPATH}"
    echo "Installed from $WHEELS/ (missing here: $missing): $(cd "$WHEELS" && ls *.whl | tr '\n' ' ')"
    echo
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1
$PY - <<'EOF'
import importlib.metadata as m, torch
gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA GPU"
print(f"{gpu}; " + ", ".join(f"{p} {m.version(p)}" for p in ("torch", "timm", "accelerate", "datasets", "peft")))
EOF
echo

echo "## GPU tests (tests/test_gpu.py, marker gpu)"
echo
echo '```text'
parallel=$($PY -c "import xdist" 2>/dev/null && echo "-n 4")  # pytest-xdist, where installed
start=$SECONDS
timeout 200 $PY -m pytest tests/test_gpu.py -m gpu -q -rfEs -p no:cacheprovider $parallel 2>&1 | tail -40
echo "(tests: $((SECONDS - start)) s)"
echo '```'
echo

# bf16 + channels_last on CUDA; the loader check (preload auto: on, on a GPU) is part of each bench
COMMON=(--device cuda --workers 8 --set train.mixed_precision=bf16 --set train.channels_last=true)
echo "## Bench at 32x32 (CIFAR-like)"
echo
start=$SECONDS
timeout 170 $PY tools/bench.py --size 32 --batch 256 --steps 30 "${COMMON[@]}" --out "$OUTDIR/bench32.md" \
    --strategies full,head,head_cached,middle_block,filters_out,filters_in,norm,bias,lora >"$OUTDIR/bench32.log" 2>&1 \
    && cat "$OUTDIR/bench32.md" || { echo '```text'; tail -20 "$OUTDIR/bench32.log"; echo '```'; }
echo "(bench 32x32: $((SECONDS - start)) s)"
echo
echo "## Bench at 224x224 (ImageNet-like)"
echo
start=$SECONDS
timeout 120 $PY tools/bench.py --size 224 --batch 128 --steps 20 "${COMMON[@]}" --out "$OUTDIR/bench224.md" \
    --strategies full,head_cached,middle_block,filters_out >"$OUTDIR/bench224.log" 2>&1 \
    && cat "$OUTDIR/bench224.md" || { echo '```text'; tail -20 "$OUTDIR/bench224.log"; echo '```'; }
echo "(bench 224x224: $((SECONDS - start)) s)"
echo

# issue 16's target: at 32x32 the loader alone delivers >= 2x what every strategy trains at
$PY - "$OUTDIR/bench32.md" <<'EOF'
import sys
from pathlib import Path
path = Path(sys.argv[1])
rows = [l.split("|") for l in (path.read_text().splitlines() if path.is_file() else [])
        if l.startswith("| ") and not l.startswith("| strategy")]
ratios = {r[1].strip(): float(r[-2]) for r in rows if len(r) > 10}
if not ratios:
    print("Loader target at 32x32: not measured (see the bench output above).")
else:
    worst = min(ratios, key=ratios.get)
    verdict = "holds" if ratios[worst] >= 2 else "does not hold"
    print(f"Loader target at 32x32 (loader alone >= 2x training, every row): {verdict}; lowest {ratios[worst]:.1f}x ({worst}).")
EOF
