#!/bin/bash
# Runs one mmjax experiment on every host of a cloud TPU VM pod slice (e.g. v4-32) at once.
#
#   scripts/tpu_pod.sh TPU_NAME ZONE CONFIG WORKDIR [--config.x=y ...]
#
# WORKDIR must be storage all hosts share (a gs:// bucket or a mounted filesystem), because every
# host writes its shards of each checkpoint there. On a pod, launch.py calls
# jax.distributed.initialize() with no arguments (TPU_WORKER_HOSTNAMES lists several hosts), so no
# coordinator flags are needed. The repository is copied to each host and its requirements installed
# first (set SKIP_SETUP=1 to skip that on later runs). Preempted TPU VMs get SIGTERM: the run saves;
# rerun the same command to resume.
set -euo pipefail
tpu="${1:?usage: scripts/tpu_pod.sh TPU_NAME ZONE CONFIG WORKDIR [overrides...]}"
zone="${2:?zone}"
config="${3:?config}"
workdir="${4:?workdir}"
shift 4
repo="$(cd "$(dirname "$0")/.." && pwd)"
ssh=(gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=all)
if [[ "${SKIP_SETUP:-0}" != 1 ]]; then
  gcloud compute tpus tpu-vm scp --recurse "$repo" "$tpu":~/mmjax --zone="$zone" --worker=all
  "${ssh[@]}" --command="cd ~/mmjax && python3 -m pip install -r requirements.txt 'jax[tpu]'"
fi
"${ssh[@]}" --command="cd ~/mmjax && python3 launch.py --config=$config --workdir=$workdir $*"
