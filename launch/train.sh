#!/usr/bin/env bash
# Train a distlearn experiment on this machine with `accelerate launch`, one
# process per GPU, or DISTLEARN_CPU_PROCS CPU processes on a machine without GPUs.
#
#   launch/train.sh [CONFIG] [key.path=value ...]
#   launch/train.sh configs/digits.yaml learner_configs.learner_parameters.n_epochs=10
#   DISTLEARN_CPU_PROCS=2 launch/train.sh configs/wine.yaml      # 2 CPU processes (gloo)
#
# CONFIG is a YAML file or a shipped config's name (default: digits); the rest
# are overrides for `distlearn train`. Settings (environment variables, all optional):
#
#   NUM_PROCESSES        processes to start; default: the GPU count, or
#                        DISTLEARN_CPU_PROCS when there is no GPU
#   DISTLEARN_CPU_PROCS  processes on a machine without GPUs (default 1; at most
#                        the number of cores is sensible)
#   DISTLEARN_GPUS       GPUs on this machine; default: the entries of
#                        CUDA_VISIBLE_DEVICES when set, else the lines of `nvidia-smi -L`
#   MAIN_PROCESS_PORT    rendezvous port (default 0: a free port is picked)
#   ACCELERATE_CONFIG    an accelerate config file (e.g. configs/accelerate/fsdp.yaml)
#                        used instead of the detected topology; NUM_PROCESSES, when
#                        set, still overrides its process count
#   ACCELERATE_ARGS      more `accelerate launch` flags, split on spaces
#                        (e.g. "--num_cpu_threads_per_process 2")
#   MIXED_PRECISION      no | bf16 | fp16 for configs whose learner_parameters.mixed_precision
#                        is null (default no); a value in the config wins
#   PYTHON               the interpreter distlearn is installed in (default: python3)
#   DRY_RUN=1            print the command instead of running it
#
# Stopping: SIGTERM, SIGINT (Ctrl-C) or SIGUSR1 sent to this script reaches every training
# process, which saves a checkpoint and stops; the script then exits 143 (130 for SIGINT) and
# prints the command that resumes, this script included.
#
# Without a GPU, several processes need `--multi_gpu` plus ACCELERATE_USE_CPU=1:
# `--cpu` (or distributed_type MULTI_CPU) starts a single process, and without
# the variable each process trains alone on all the data (docs/pitfalls.md).
set -euo pipefail

# This launch as a command (the settings given and the script), for the resume line printed after a stop.
DISTLEARN_LAUNCH_COMMAND=
for var in NUM_PROCESSES DISTLEARN_CPU_PROCS DISTLEARN_GPUS ACCELERATE_CONFIG ACCELERATE_ARGS MIXED_PRECISION; do
    if [[ -n ${!var:-} ]]; then DISTLEARN_LAUNCH_COMMAND+=$(printf '%s=%q ' "$var" "${!var}"); fi
done
export DISTLEARN_LAUNCH_COMMAND+=$0

PYTHON=${PYTHON:-python3}
USER_NUM_PROCESSES=${NUM_PROCESSES:-}
USER_PORT=${MAIN_PROCESS_PORT:-}

source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
NUM_PROCESSES=${NUM_PROCESSES:-$LOCAL_PROCS}

cmd=("$PYTHON" -m accelerate.commands.launch)
if [[ -n ${ACCELERATE_CONFIG:-} ]]; then
    # The file describes the topology; only what the user set here overrides it.
    cmd+=(--config_file "$ACCELERATE_CONFIG")
    [[ -z $USER_NUM_PROCESSES ]] || cmd+=(--num_processes "$USER_NUM_PROCESSES")
    [[ -z $USER_PORT ]] || cmd+=(--main_process_port "$USER_PORT")
else
    if (( NUM_PROCESSES > 1 )); then
        cmd+=(--multi_gpu)  # also the working multi-process form on CPU, with ACCELERATE_USE_CPU=1
    elif (( GPUS == 0 )); then
        cmd+=(--cpu)
    fi
    # The precision for configs that leave learner_parameters.mixed_precision null;
    # a value set in the config wins (as Accelerator(mixed_precision=...) does).
    cmd+=(--num_processes "$NUM_PROCESSES" --num_machines 1 --mixed_precision "${MIXED_PRECISION:-no}" --dynamo_backend no
          --main_process_port "${USER_PORT:-0}")
fi
# shellcheck disable=SC2206  # word splitting of ACCELERATE_ARGS is the point
cmd+=(${ACCELERATE_ARGS:-})
cmd+=(-m distlearn train "$@")

[[ -n ${DRY_RUN:-} ]] || echo "launch/train.sh: $NUM_PROCESSES process(es), $GPUS GPU(s) found" >&2
run_or_print "${cmd[@]}"
