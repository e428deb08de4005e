#!/usr/bin/env bash
# Start a one-node Slurm cluster on this machine (root, Debian) for tests/CI.
# Usage: eval "$(scripts/slurm/start-local-slurm.sh)"
# stdout carries only the final `export SLURM_CONF=...` line; progress goes to stderr.
# Exits non-zero with one "start-local-slurm: ..." line on stderr when Slurm cannot run.
set -euo pipefail

DIR=${CTXSYNTH_SLURM_DIR:-/tmp/ctxsynth-slurm}
CONF=$DIR/slurm.conf
NODE=$(hostname -s)
TIMEOUT=${CTXSYNTH_SLURM_TIMEOUT:-60}

log() { echo "start-local-slurm: $*" >&2; }
die() { echo "start-local-slurm: $*" >&2; exit 1; }
# Query only a live controller: against a dead one, Slurm clients retry for ~10 s.
ctld_alive() { pid=$(cat "$DIR/slurmctld.pid" 2>/dev/null) && [ "$(cat /proc/"$pid"/comm 2>/dev/null)" = slurmctld ]; }
node_state() { if ctld_alive; then SLURM_CONF=$CONF timeout 10 sinfo -h -N -n "$NODE" -o %t 2>/dev/null | head -n1 || true; fi; }

[ "$(id -u)" = 0 ] || die "must run as root (daemons run as root here)"

# Already up with our config: nothing to do (keeps repeated calls cheap).
if [ -f "$CONF" ] && [[ "$(node_state)" =~ ^(idle|mix|alloc)$ ]]; then
    log "already running"; echo "export SLURM_CONF=$CONF"; exit 0
fi

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
    log "installing slurm-wlm and munge"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge; } \
        >"${TMPDIR:-/tmp}/start-local-slurm-apt.log" 2>&1 \
        || die "cannot install slurm-wlm/munge (see ${TMPDIR:-/tmp}/start-local-slurm-apt.log)"
fi

# munge: the package postinst normally creates the key, but not in every image.
if [ ! -s /etc/munge/munge.key ]; then
    mkdir -p /etc/munge
    mungekey -c -k /etc/munge/munge.key 2>/dev/null \
        || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown munge:munge /etc/munge /etc/munge/munge.key; chmod 0700 /etc/munge; chmod 0400 /etc/munge/munge.key
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    # No systemd in containers: start munged ourselves, as its own user (it refuses root without --force).
    install -d -o munge -g munge -m 0755 /run/munge
    runuser -u munge -- /usr/sbin/munged 2>/dev/null || /usr/sbin/munged --force \
        || die "cannot start munged"
    for _ in $(seq 20); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.5; done
    munge -n | unmunge >/dev/null 2>&1 || die "munge credentials do not round-trip"
fi

# Stop leftovers from a previous (possibly broken) run so the ports are free.
STOP=$(dirname "$0")/stop-local-slurm.sh
"$STOP" >/dev/null 2>&1 || true
# After a failed start, leave no half-started daemons behind.
fail() { "$STOP" >/dev/null 2>&1 || true; die "$@"; }

mkdir -p "$DIR"/{state,spool,log}
NCPU=$(nproc)
MEM_MB=$(awk '/^MemTotal:/ {print int($2/1024)}' /proc/meminfo)
REALMEM=$(( MEM_MB * 95 / 100 ))   # below the true total, or slurmd drains the node ("Low RealMemory")
cat >"$CONF" <<CONF
ClusterName=ctxsynth
SlurmctldHost=$NODE
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
# Containers have no usable cgroup hierarchy for Slurm: track processes via /proc.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# Without a default, a job with no --mem gets the whole node's memory and jobs serialize.
DefMemPerCPU=$(( REALMEM / NCPU ))
# A restarted slurmd must come back without a manual "resume".
ReturnToService=2
# No slurmdbd: finished jobs stay visible to scontrol/squeue for this long (s).
MinJobAge=3600
# A job whose dependency can never be met is cancelled instead of pending forever.
DependencyParameters=kill_invalid_depend
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$DIR/log/jobcomp.txt
MailProg=/bin/true
NodeName=$NODE CPUs=$NCPU RealMemory=$REALMEM State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
CONF

# Daemonize (no -D) so nothing keeps the caller's $(...) pipe open.
export SLURM_CONF=$CONF
slurmctld -f "$CONF" </dev/null >>"$DIR/log/slurmctld.out" 2>&1 || fail "slurmctld failed to start (see $DIR/log/)"
slurmd -f "$CONF" </dev/null >>"$DIR/log/slurmd.out" 2>&1 || fail "slurmd failed to start (see $DIR/log/)"

for ((i = 0; i < TIMEOUT * 2; i++)); do
    st=$(node_state)
    case $st in
        idle|mix|alloc) log "node $NODE is $st"; echo "export SLURM_CONF=$CONF"; exit 0 ;;
        down*|drain*|drng*|fail*) scontrol update nodename="$NODE" state=resume >/dev/null 2>&1 || true ;;
    esac
    # A bad config or busy port kills slurmctld right away: fail now, not after TIMEOUT.
    ((i < 10)) || ctld_alive || fail "slurmctld exited (see $DIR/log/slurmctld.log)"
    sleep 0.5
done
fail "node $NODE not idle after ${TIMEOUT}s (state: ${st:-no answer}; see $DIR/log/)"
