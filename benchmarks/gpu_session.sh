#!/bin/bash
# Every GPU check the open issues ask for, as two device calls (an H200 lent for 15 minutes of device time per
# session, machine start included; no network, no model weights):
#
#   here, once:   bash benchmarks/gpu_session.sh --prepare   (lowtune's venv active: the wheels the device lacks into
#                 .whl/, the builtin model's tokenizer into .gpu/; 61 MB, under the 64 MiB a call carries)
#   call 1:       command "bash benchmarks/gpu_session.sh throughput", carry [".whl", ".gpu"], timeout_s 600
#                 lowtune against plain TRL + PEFT + bitsandbytes: GRPO, then SFT, then DPO, then the speed levers
#                 while the budget lasts (throughput_cuda.*; issue 22; about 9 minutes, estimated from the recorded
#                 H200 row times in benchmarks/results/throughput_cuda.json, not yet run)
#   call 2:       command "bash benchmarks/gpu_session.sh kernel", same carry, timeout_s 240, on the warm machine
#                 the Triton log-prob kernel's tests on the GPU (issue 19) and the kernel at the Llama-3-8B head shape
#                 against TRL's chunked path and Liger, with the matmul rate (logprobs_cuda.*; issue 22)
#   here, after:  copy the returned files into benchmarks/results/ (benchmarks/README.md, "Throughput on a GPU");
#                 a later lease can run the levers the budget skipped and `throughput.py merge` the two files
#
# Each call writes gpu.txt (the GPU, its driver and the versions) and at most 5 files: under the 8 that come back.
set -u
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"

if [ "${1:-}" = "--prepare" ]; then
    # The packages the device image lacks or holds at other versions (its list: /work/.library/device/KINDS.md), as
    # Python 3.12 x86-64 wheels; both folders are ignored by git and travel only when the run carries them.
    grep -qx "/.whl/" .git/info/exclude 2>/dev/null || echo "/.whl/" >>.git/info/exclude
    grep -qx "/.gpu/" .git/info/exclude 2>/dev/null || echo "/.gpu/" >>.git/info/exclude
    rm -rf .whl .gpu && mkdir -p .whl .gpu/tokenizer
    for spec in trl==1.16.0 transformers==5.24.0 peft==0.21.2 bitsandbytes==0.50.2 liger-kernel==0.8.5 \
        datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 gguf==0.19.0; do
        python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
            --platform manylinux2014_x86_64 --platform any -d .whl "$spec" || exit 1
    done
    tokenizer=$(python -c "from lowtune import builtin; print(builtin.ensure('smollm2-135m-instruct'))") || exit 1
    cp "$tokenizer"/tokenizer.json "$tokenizer"/tokenizer_config.json "$tokenizer"/chat_template.jinja .gpu/tokenizer/
    gzip -9 .gpu/tokenizer/tokenizer.json  # 3.5 MB -> under 1 MB: the wheels leave little of the 64 MiB a call carries
    du -sh .whl .gpu
    exit 0
fi

: "${OUT:?run this on the device machine, where OUT is set}"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
export PYTHONPATH=/tmp/site:$here
[ -f .gpu/tokenizer/tokenizer.json ] || gunzip -k .gpu/tokenizer/tokenizer.json.gz || exit 1

# what ran where
{
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
    python3 -c "import torch, transformers, trl, peft, bitsandbytes, triton; print('torch', torch.__version__, 'cuda', \
torch.version.cuda, '| transformers', transformers.__version__, '| trl', trl.__version__, '| peft', peft.__version__, \
'| bitsandbytes', bitsandbytes.__version__, '| triton', triton.__version__)"
    python3 -c "import liger_kernel; print('liger-kernel importable')" 2>&1 | tail -1
} >"$OUT/gpu.txt" 2>&1
cat "$OUT/gpu.txt"

case "${1:-}" in
throughput)
    python3 benchmarks/throughput.py cuda --tokenizer .gpu/tokenizer --budget 500 --out "$OUT"
    ;;
kernel)
    timeout 100 python3 -m pytest -q -p no:cacheprovider tests/test_kernels.py >"$OUT/kernel_tests.txt" 2>&1
    tail -3 "$OUT/kernel_tests.txt"
    python3 benchmarks/logprobs.py --device cuda --runs 5 --shapes Llama-3-8B --modes fwd+bwd \
        --variants naive trl_chunked liger_flce lowtune --timeout 60 --budget 110 --out "$OUT"
    ;;
*)
    echo "say which call: throughput or kernel" >&2
    exit 2
    ;;
esac
ls -la "$OUT"
