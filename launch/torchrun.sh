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
#                        the command from the top and resumes from the run folder's newest
#                        complete checkpoint (run.resume=auto): the named run.output_dir, or
#                        the default runs/<config>-<DISTLEARN_RUN_ID>
#   DISTLEARN_RUN_ID     names the default run folder (default: <date>-<time>-<this shell's pid>);
#                        the same value on every restart, so a restarted launch finds its folder
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
# Stopping: SIGTERM, SIGINT (Ctrl-C) or SIGUSR1 sent to this script reaches every training
# process, which saves a checkpoint and stops; the script then exits 143 (130 for SIGINT) and
# prints the command that resumes, this script included.
#
# Without a GPU, ACCELERATE_USE_CPU=1 is exported so that every process joins
# one gloo group instead of training alone (docs/pitfalls.md).
set -euo pipefail

# This launch as a command (the settings given and the script), for the resume line printed after a stop.
DISTLEARN_LAUNCH_COMMAND=
for var in NPROC_PER_NODE DISTLEARN_CPU_PROCS DISTLEARN_GPUS MAX_RESTARTS NNODES NODE_RANK RDZV_ENDPOINT RDZV_ID MIXED_PRECISION TORCHRUN_ARGS; do
    if [[ -n ${!var:-} ]]; then DISTLEARN_LAUNCH_COMMAND+=$(printf '%s=%q ' "$var" "${!var}"); fi
done
export DISTLEARN_LAUNCH_COMMAND+=$0

PYTHON=${PYTHON:-python3}
MAX_RESTARTS=${MAX_RESTARTS:-0}
NNODES=${NNODES:-1}
# One name per launch, kept by every restart: the default output folder is runs/<config>-<it>.
export DISTLEARN_RUN_ID=${DISTLEARN_RUN_ID:-$(date +%Y%m%d-%H%M%S)-$$}
# torchrun shares its rendezvous TCPStore with the workers and, on a restart, gives the new
# workers the same store without a per-attempt prefix: the new group can read the dead
# attempt's addresses and dial them ("Connection refused"). A store per rendezvous round
# (the agent's opt-out) makes every restart start from a clean store.
export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=${TORCH_DISABLE_SHARE_RDZV_TCP_STORE:-1}

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
