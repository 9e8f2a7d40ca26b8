# Sourced by launch/train.sh and launch/torchrun.sh: how many processes to start
# here, and how to run (or with DRY_RUN=1 print) the final command.
#
# Sets GPUS (the GPUs of this machine: DISTLEARN_GPUS, else the entries of
# CUDA_VISIBLE_DEVICES when set, else the lines of `nvidia-smi -L`) and
# LOCAL_PROCS (one per GPU, else DISTLEARN_CPU_PROCS, default 1). Without a GPU
# it exports ACCELERATE_USE_CPU=1: the workers must see it, or each one trains
# alone on all the data (docs/pitfalls.md).

count_gpus() {
    if [[ -n ${DISTLEARN_GPUS:-} ]]; then
        echo "$DISTLEARN_GPUS"
    elif [[ -n ${CUDA_VISIBLE_DEVICES+set} ]]; then
        # "0,1" -> 2; "" or "-1" -> 0 (CUDA's ways of hiding every GPU)
        local ids=${CUDA_VISIBLE_DEVICES//[[:space:]]/}
        if [[ -z $ids || $ids == -1* ]]; then echo 0; else tr ',' '\n' <<<"$ids" | grep -c .; fi
    elif command -v nvidia-smi >/dev/null 2>&1; then
        nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true
    else
        echo 0
    fi
}

GPUS=$(count_gpus)
if (( GPUS > 0 )); then
    LOCAL_PROCS=$GPUS
else
    LOCAL_PROCS=${DISTLEARN_CPU_PROCS:-1}
    export ACCELERATE_USE_CPU=1
fi

# Run the command (replacing this shell), or with DRY_RUN set print it with the
# environment it needs.
run_or_print() {
    if [[ -n ${DRY_RUN:-} ]]; then
        local var
        for var in ACCELERATE_USE_CPU TORCH_DISABLE_SHARE_RDZV_TCP_STORE DISTLEARN_RUN_ID; do  # what the workers need
            [[ -n ${!var:-} ]] && printf '%s=%q ' "$var" "${!var}"
        done
        printf '%q ' "$@"
        echo
        exit 0
    fi
    exec "$@"
}
