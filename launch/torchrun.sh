#!/usr/bin/env bash
# Train a distlearn experiment with torchrun (torch.distributed.run): one
# process per GPU, or DISTLEARN_CPU_PROCS CPU processes on a machine without GPUs.
#
#   launch/torchrun.sh [CONFIG] [key.path=value ...]
#   DISTLEARN_CPU_PROCS=2 launch/torchrun.sh configs/digits.yaml run.seed=1
#   NNODES=2 NODE_RANK=0 RDZV_ENDPOINT=node0:29400 launch/torchrun.sh ...   # on each node
#
# CONFIG is a YAML file or a shipped config's name (default: digits); the rest
# are overrides for `distlearn train`. Settings (environment variables, all optional):
#
#   NPROC_PER_NODE       processes on this machine; default: the GPU count, or
#                        DISTLEARN_CPU_PROCS when there is no GPU
#   DISTLEARN_CPU_PROCS  processes on a machine without GPUs (default 1)
#   DISTLEARN_GPUS       GPUs on this machine; default: the entries of
#                        CUDA_VISIBLE_DEVICES when set, else the lines of `nvidia-smi -L`
#   MAX_RESTARTS         torchrun --max_restarts (default 0): after a failure, start
#                        every process again, this many times at most. A restart reruns
#                        the command from the top: with a named run.output_dir it resumes
#                        from that folder's newest complete checkpoint (run.resume=auto)
#   NNODES               machines (default 1: standalone, a free local port)
#   NODE_RANK            this machine's rank (default 0; c10d assigns ranks anyway)
#   RDZV_ENDPOINT        host:port of the c10d rendezvous, required when NNODES > 1
#   RDZV_ID              rendezvous id shared by the nodes of one job (default distlearn)
#   MIXED_PRECISION      no | bf16 | fp16 for configs whose learner_parameters.mixed_precision
#                        is null (a value in the config wins)
#   TORCHRUN_ARGS        more torchrun flags, split on spaces
#   PYTHON               the interpreter distlearn is installed in (default: python3)
#   DRY_RUN=1            print the command instead of running it
#
# Without a GPU, ACCELERATE_USE_CPU=1 is exported so that every process joins
# one gloo group instead of training alone (docs/pitfalls.md).
set -euo pipefail

PYTHON=${PYTHON:-python3}
MAX_RESTARTS=${MAX_RESTARTS:-0}
NNODES=${NNODES:-1}

source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
NPROC_PER_NODE=${NPROC_PER_NODE:-$LOCAL_PROCS}

cmd=("$PYTHON" -m torch.distributed.run --nproc_per_node "$NPROC_PER_NODE" --max_restarts "$MAX_RESTARTS")
if (( NNODES > 1 )); then
    if [[ -z ${RDZV_ENDPOINT:-} ]]; then
        echo "launch/torchrun.sh: NNODES=$NNODES needs RDZV_ENDPOINT=host:port (a port on the first node)" >&2
        exit 2
    fi
    cmd+=(--nnodes "$NNODES" --node_rank "${NODE_RANK:-0}" --rdzv_backend c10d
          --rdzv_endpoint "$RDZV_ENDPOINT" --rdzv_id "${RDZV_ID:-distlearn}")
else
    cmd+=(--standalone)  # a local c10d rendezvous on a free port: several jobs can share the machine
fi
# shellcheck disable=SC2206  # word splitting of TORCHRUN_ARGS is the point
cmd+=(${TORCHRUN_ARGS:-})
# Accelerate reads the launcher's precision from this variable (what `accelerate launch --mixed_precision` sets).
[[ -z ${MIXED_PRECISION:-} ]] || export ACCELERATE_MIXED_PRECISION=$MIXED_PRECISION
cmd+=(-m distlearn train "$@")

[[ -n ${DRY_RUN:-} ]] || echo "launch/torchrun.sh: $NPROC_PER_NODE process(es) per node x $NNODES node(s), $GPUS GPU(s) found" >&2
run_or_print "${cmd[@]}"
