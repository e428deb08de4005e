#!/usr/bin/env bash
# Stop the cluster started by start-local-slurm.sh. munged is left running (harmless, shared).
set -euo pipefail

DIR=${CTXSYNTH_SLURM_DIR:-/tmp/ctxsynth-slurm}
export SLURM_CONF=$DIR/slurm.conf

# Only trust a pid file whose pid still is that daemon (pid files outlive reboots/containers).
alive() { pid=$(cat "$DIR/$1.pid" 2>/dev/null) && [ "$(cat /proc/"$pid"/comm 2>/dev/null)" = "$1" ]; }

# Cancel jobs first: with proctrack/linuxproc their processes would outlive slurmd.
# (Skipped when slurmctld is dead: clients would retry against it for ~10 s.)
if alive slurmctld; then timeout 10 scancel -p debug >/dev/null 2>&1 || true; sleep 1; fi

for d in slurmd slurmctld; do
    if alive "$d"; then
        kill "$pid"
        for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$DIR/$d.pid"
done
echo "stop-local-slurm: stopped" >&2
