#!/usr/bin/env bash
# The GPU figures of the benchmarks, in one go on a CUDA machine (H100 / H200; python3 with torch, transformers,
# tiktoken, safetensors, numpy; no internet needed):
#
#     bash benchmarks/gpu_checks.sh            # writes everything to $OUT/gpu_checks.log (OUT defaults to out)
#     bash benchmarks/gpu_checks.sh trainers   # only the trainers under torchrun (the last two checks)
#
# Each check has its own time limit (about 6 minutes in all); a failed or timed-out check (status 124) is logged
# with its exit status and the next one still runs. The script's exit status is the number of failed checks.
set -o pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1

check() {  # check SECONDS COMMAND...: run one command under a time limit and log its exit status
    local limit=$1
    shift
    echo
    echo "=== $* (limit ${limit}s)"
    local start=$SECONDS
    timeout -k 10 "$limit" "$@"
    local status=$?
    echo "=== exit status $status after $((SECONDS - start))s"
    [ "$status" -eq 0 ] || failed=$((failed + 1))
}

checks() {
    failed=0
    check 15 nvidia-smi -L
    [ "$1" = trainers ] || benchmark_checks
    trainer_checks
    echo
    echo "=== $failed check(s) failed"
    return "$failed"
}

benchmark_checks() {
    check 30 python3 -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'transformers', transformers.__version__, torch.cuda.get_device_name())"
    # MFU of a GPT-2-124M-sized training step in bf16 (target >= 40% on an H100)
    check 60 python3 benchmarks/bench_mfu.py --device=cuda
    check 150 python3 benchmarks/bench_mfu.py --device=cuda --compile=True
    # training-step throughput against transformers: the default small model, then a GPT-2-124M-sized LLaMA
    check 40 python3 benchmarks/bench_train.py --device=cuda
    check 60 python3 benchmarks/bench_train.py --device=cuda --dtype=bfloat16 --n_layer=12 --n_head=12 \
        --n_embd=768 --vocab_size=50304 --batch_size=16 --seq_len=1024 --steps=5 --repeats=2
    # sampling throughput against transformers' generate
    check 40 python3 benchmarks/bench_sampling.py --device=cuda
    check 60 python3 benchmarks/bench_sampling.py --device=cuda --num_samples=256 --new_tokens=160 --repeats=2

}

trainer_checks() {
    # the trainers under torchrun on this one GPU (NCCL, world size 1): FSDP2 + activation checkpointing in bf16,
    # then DDP + torch.compile for the alignment, candidates sampled on the GPU; short runs of the default model
    local runs=/tmp/nanoaft-gpu
    rm -rf "$runs"
    check 90 torchrun --standalone --nproc_per_node=1 train_sft.py --device=cuda --dtype=bfloat16 --parallel=fsdp \
        --checkpoint_activations=True --max_steps=300 --eval_every=0 --test_questions=300 --out_dir=$runs/vft
    check 150 torchrun --standalone --nproc_per_node=1 train_align.py --device=cuda --dtype=bfloat16 --parallel=ddp \
        --compile=True --vft=$runs/vft --n_questions=256 --max_steps=30 --log_every=10 --test_questions=50 \
        --k_questions=10 --out_dir=$runs/align
    # the default pipeline end to end on the GPU (VFT, candidates, aft_rank, evaluation) with its peak memory
    check 240 python3 benchmarks/peak_memory.py --args="--device=cuda --vft=$runs/default-vft --out_dir=$runs/default-align"
}

checks "$1" 2>&1 | tee "$OUT/gpu_checks.log"
