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

# Run the command, or with DRY_RUN set print it with the environment it needs.
#
# The shell stays while the run lasts, to pass a stop signal on and to exit with the run's
# code. A signal that reached the launcher (torchrun's agent, which `accelerate launch` runs
# in-process) would make it kill its workers and end with a traceback and exit code 1, so the
# launcher gets a process group of its own (Ctrl-C reaches this shell only), and SIGTERM, SIGINT
# or SIGUSR1 sent here goes to the training processes, which save a checkpoint and stop. They
# write the exit code of the stop (143, or 130 for SIGINT) to DISTLEARN_EXIT_CODE_FILE and exit 0,
# so that the launcher ends quietly (and torchrun does not restart a run that was asked to stop);
# this shell then exits with that code.
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
    DISTLEARN_EXIT_CODE_FILE=$(mktemp "${TMPDIR:-/tmp}/distlearn-exit.XXXXXX")
    export DISTLEARN_EXIT_CODE_FILE
    trap 'rm -f "$DISTLEARN_EXIT_CODE_FILE"' EXIT
    set -m  # job control: the launcher below runs in a process group of its own
    "$@" &
    LAUNCHER_PID=$!
    set +m
    local sig
    for sig in TERM INT USR1; do
        # shellcheck disable=SC2064  # expanded now, on purpose
        trap "forward_signal $sig" "$sig"
    done
    local rc=0
    while :; do
        rc=0
        wait "$LAUNCHER_PID" || rc=$?
        # a trapped signal ends `wait` early (rc > 128) while the launcher still runs: wait again
        kill -0 "$LAUNCHER_PID" 2>/dev/null || break
    done
    local code
    code=$(cat "$DISTLEARN_EXIT_CODE_FILE" 2>/dev/null || true)
    if [[ $code =~ ^[0-9]+$ ]] && (( rc == 0 )); then
        exit "$code"  # the run stopped on a signal, after its checkpoint
    fi
    exit "$rc"
}

# Pass signal $1 to the training processes (the launcher's children); before they exist, to the launcher.
forward_signal() {
    local workers
    workers=$(pgrep -P "$LAUNCHER_PID" 2>/dev/null || true)
    if [[ -n $workers ]]; then
        # shellcheck disable=SC2086  # one pid per word
        kill -s "$1" $workers 2>/dev/null || true
    else
        kill -s "$1" "$LAUNCHER_PID" 2>/dev/null || true
    fi
}
