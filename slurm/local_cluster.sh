#!/usr/bin/env bash
# A real, throwaway Slurm cluster on this one host, from Debian's packages
# (slurmctld, slurmd, slurm-client, munge), for trying and testing the sbatch
# scripts of this folder. Needs root; no systemd.
#
#   slurm/local_cluster.sh up [--nodes 1|2]   start (or reconcile) the cluster; idempotent
#   slurm/local_cluster.sh down               cancel every job, stop every daemon; idempotent
#   slurm/local_cluster.sh status             daemons, nodes, partitions, jobs
#
# What "up" builds:
#   - its own munged on a private socket (nothing under /run/munge is touched,
#     a system munged keeps running undisturbed);
#   - slurmctld, and one slurmd per simulated node (optnode1, optnode2: Debian
#     builds Slurm with multiple-slurmd support, one port per slurmd); the node
#     names get /etc/hosts lines (127.0.0.1) so that MASTER_ADDR resolves;
#   - one partition "debug" (the default) holding every node; each node
#     advertises one pretend GPU (gres/gpu backed by /dev/null) so that a
#     script's --gpus-per-node request is accepted as written; there is still
#     no CUDA, and the trainer runs on CPU with gloo.
# Config, state, logs and pid files live in $OPT_SLURM_DIR (default
# /tmp/opt-scale-slurm). Clients find the config through SLURM_CONF (printed
# by "status"), or through /etc/slurm/slurm.conf, which "up" links to ours
# unless that file already exists and is someone else's.
#
# Environment knobs:
#   OPT_SLURM_DIR=path     config/state/log directory (default /tmp/opt-scale-slurm)
#   OPT_SLURM_PORT=16817   slurmctld port; slurmd ports follow it (16818, 16819)
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

DIR="${OPT_SLURM_DIR:-/tmp/opt-scale-slurm}"
CTLD_PORT="${OPT_SLURM_PORT:-16817}"
CLUSTER="optlocal$CTLD_PORT"   # one name per cluster: "down" finds its jobs' processes by it
NODE_PREFIX="optnode"
PARTITION="debug"
CONF="$DIR/etc/slurm.conf"
MUNGE_SOCKET="$DIR/munge/munge.socket"
SYSTEM_CONF="/etc/slurm/slurm.conf"
HOSTS_TAG="# opt-scale slurm/local_cluster.sh"
# Every daemon we start carries this variable (slurmstepd inherits it from
# slurmd), so that "down" can find leftovers by it and never touches others.
export OPT_LOCAL_SLURM_DIR="$DIR"
export SLURM_CONF="$CONF"

log() { printf '[local_cluster] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# --- processes -------------------------------------------------------------
# PID 1 here does not reap exited daemons, so an exited daemon lingers as a
# zombie that "kill -0" still finds: a process is alive only if it exists,
# is not a zombie, and is the program we expect (pid reuse).
alive() {  # pid expected-comm
    local pid="$1" want="$2" stat
    [[ "$pid" =~ ^[0-9]+$ ]] && [ -r "/proc/$pid/stat" ] || return 1
    stat="$(cat "/proc/$pid/stat" 2>/dev/null)" || return 1
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$want" ] || return 1
    stat="${stat##*) }"  # the fields after the parenthesised comm (which may hold spaces)
    case "${stat%% *}" in Z|X|x) return 1 ;; esac
}
dead() { ! alive "$@"; }
ppid_of() { local s; s="$(cat "/proc/$1/stat" 2>/dev/null)" || return 0; s="${s##*) }"; set -- $s; echo "${2:-}"; }

pid_of() { [ -f "$1" ] && tr -dc '0-9' <"$1" || true; }

wait_until() {  # seconds description command...
    local limit="$1" what="$2" deadline=$((SECONDS + $1)); shift 2
    until "$@"; do
        [ "$SECONDS" -lt "$deadline" ] || { log "timed out after $limit s waiting for $what"; return 1; }
        sleep 0.5
    done
}

stop_pid() {  # pid comm: TERM, then KILL after 10 s
    local pid="$1" comm="$2"
    alive "$pid" "$comm" || return 0
    kill -TERM "$pid" 2>/dev/null || true
    if ! wait_until 10 "$comm ($pid) to exit" dead "$pid" "$comm"; then
        log "$comm ($pid) ignored SIGTERM: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
}

node_names() { local n; for ((n = 1; n <= $1; n++)); do echo "$NODE_PREFIX$n"; done; }
configured_nodes() { if [ -f "$CONF" ]; then grep -c '^NodeName=' "$CONF" || true; else echo 0; fi; }

munged_alive() { alive "$(pid_of "$DIR/munge/munged.pid")" munged; }
slurmctld_alive() { alive "$(pid_of "$DIR/run/slurmctld.pid")" slurmctld; }
slurmd_alive() { alive "$(pid_of "$DIR/run/slurmd-$1.pid")" slurmd; }

# --- configuration ---------------------------------------------------------
write_config() {  # nodes
    local nodes="$1" i name
    mkdir -p "$DIR/etc" "$DIR/state" "$DIR/log" "$DIR/run" "$DIR/munge"
    local saved_name="$DIR/state/slurmctld/clustername"
    if [ -f "$saved_name" ] && [ "$(cat "$saved_name")" != "$CLUSTER" ]; then
        # slurmctld refuses to start on another cluster's state.
        log "state in $DIR belongs to cluster $(cat "$saved_name"), not $CLUSTER: starting from a clean state"
        rm -rf "$DIR/state/slurmctld"
    fi
    # munged insists that everyone may traverse its socket's directory.
    chmod 755 "$DIR" "$DIR/munge"
    {
        cat <<EOF
# Written by slurm/local_cluster.sh: a throwaway cluster on one host. Edits are overwritten.
ClusterName=$CLUSTER
SlurmctldHost=$(hostname -s)(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire also sets how long a requeued job waits before it may start again
# (default 120 s); a preempted-and-requeued job should restart at once here.
AuthInfo=socket=$MUNGE_SOCKET,cred_expire=5
StateSaveLocation=$DIR/state/slurmctld
SlurmdSpoolDir=$DIR/state/slurmd-%n
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd-%n.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups in containers: track a task by its process group.
ProctrackType=proctrack/pgid
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
# No slurmdbd, so no sacct: ask "sbatch --wait" or "scontrol show job".
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
# Schedule within a second or two of a submit, an exit or a requeue, instead
# of the production pace (main loop every 60 s, backfill every 30 s).
SchedulerParameters=sched_interval=1,bf_interval=1,batch_sched_delay=1
# A job asking for more than the cluster has is refused at once, not left
# pending forever.
EnforcePartLimits=ALL
ReturnToService=2
# Both simulated nodes share this host's cores: trust the node lines below,
# not the hardware.
SlurmdParameters=config_overrides
JobRequeue=1
# sbatch --wait polls every 2, 8, then 32 s, but never longer than MinJobAge/2
# (so that it sees the job before its record is purged): 16 keeps it at 8 s.
MinJobAge=16
KillWait=10
InactiveLimit=0
SlurmdTimeout=60
GresTypes=gpu
EOF
        for ((i = 1; i <= nodes; i++)); do
            name="$NODE_PREFIX$i"
            echo "NodeName=$name NodeAddr=127.0.0.1 Port=$((CTLD_PORT + i)) CPUs=$(nproc) RealMemory=4000 Gres=gpu:1 State=UNKNOWN"
        done
        echo "PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP"
    } >"$CONF.tmp"
    mv "$CONF.tmp" "$CONF"
    # Pretend GPUs: Slurm 22.05 drops a GPU without a device file and refuses
    # one that is not a character device; /dev/null is one, and CUDA finds
    # nothing there.
    echo "NodeName=${NODE_PREFIX}[1-$nodes] Name=gpu File=/dev/null" >"$DIR/etc/gres.conf"
}

link_system_conf() {
    if [ -L "$SYSTEM_CONF" ] && [ "$(readlink "$SYSTEM_CONF")" = "$CONF" ]; then
        return
    elif [ -e "$SYSTEM_CONF" ] || [ -L "$SYSTEM_CONF" ]; then
        log "$SYSTEM_CONF exists and is not ours: left alone; clients need SLURM_CONF=$CONF"
    else
        mkdir -p "$(dirname "$SYSTEM_CONF")"
        ln -s "$CONF" "$SYSTEM_CONF"
    fi
}

unlink_system_conf() {
    if [ -L "$SYSTEM_CONF" ] && [ "$(readlink "$SYSTEM_CONF")" = "$CONF" ]; then
        rm -f "$SYSTEM_CONF"
    fi
}

add_hosts_lines() {  # nodes
    local name
    for name in $(node_names "$1"); do
        if ! getent hosts "$name" >/dev/null; then
            echo "127.0.0.1 $name  $HOSTS_TAG" >>/etc/hosts
            log "added '127.0.0.1 $name' to /etc/hosts"
        fi
    done
}

# --- daemons ---------------------------------------------------------------
munge_works() { munge -n -S "$MUNGE_SOCKET" 2>/dev/null | unmunge -S "$MUNGE_SOCKET" >/dev/null 2>&1; }

start_munged() {
    munged_alive && munge_works && return
    local key="$DIR/munge/munge.key"
    if [ ! -s "$key" ]; then
        # A key of our own: the cluster is one host, nothing else must trust it.
        (umask 077; head -c 1024 /dev/urandom >"$key")
    fi
    rm -f "$MUNGE_SOCKET" "$MUNGE_SOCKET.lock"
    munged --socket="$MUNGE_SOCKET" --key-file="$key" --pid-file="$DIR/munge/munged.pid" \
        --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/munged.seed"
    wait_until 15 "munged to answer on $MUNGE_SOCKET" munge_works || die "munged did not start; see $DIR/log/munged.log"
}

ctld_answers() { scontrol ping 2>/dev/null | grep -q 'is UP'; }

start_slurmctld() {
    slurmctld_alive && return
    slurmctld -f "$CONF"
    wait_until 30 "slurmctld to answer" ctld_answers || die "slurmctld did not start; see $DIR/log/slurmctld.log"
}

start_slurmd() {  # node
    slurmd_alive "$1" && return
    mkdir -p "$DIR/state/slurmd-$1"
    slurmd -N "$1" -f "$CONF"
}

nodes_ready() {  # every configured node is idle (or already running jobs)
    local states node
    states="$(sinfo -h -N -o '%N %T' 2>/dev/null)" || return 1
    # A drain or down state kept in the saved state (an earlier config, a
    # killed slurmd) would never clear by itself on a throwaway cluster.
    for node in $(awk '$2 ~ /drain|down|fail|inval/ {print $1}' <<<"$states"); do
        scontrol update nodename="$node" state=resume 2>/dev/null || true
    done
    [ -n "$states" ] && ! awk '{print $2}' <<<"$states" | grep -qvE '^(idle|mixed|allocated)$'
}

# --- jobs ------------------------------------------------------------------
no_jobs() { [ -z "$(squeue -h -o %A 2>/dev/null)" ]; }

cancel_all_jobs() {
    ctld_answers || return 0
    local ids
    ids="$(squeue -h -o '%A' 2>/dev/null | tr '\n' ' ')"
    [ -n "${ids// /}" ] || return 0
    log "cancelling jobs: $ids"
    # shellcheck disable=SC2086
    scancel $ids 2>/dev/null || true
    # Job processes outlive slurmd: let Slurm end them (SIGTERM, KillWait, SIGKILL) first.
    wait_until 40 "jobs to end" no_jobs || true
}

# Processes of our jobs (SLURM_CLUSTER_NAME in their environment) and our
# daemons and step daemons (OPT_LOCAL_SLURM_DIR) that survived: kill them.
sweep_leftovers() {
    local pid env comm self_chain=" " p="$$"
    while [[ "$p" =~ ^[0-9]+$ ]] && [ "$p" -gt 1 ]; do  # never ourselves or our callers
        self_chain+="$p "
        p="$(ppid_of "$p")"
    done
    for pid in $(ls /proc | grep -E '^[0-9]+$'); do
        [[ "$self_chain" == *" $pid "* ]] && continue
        env="$(tr '\0' '\n' 2>/dev/null <"/proc/$pid/environ")" || continue
        if grep -qxF -e "SLURM_CLUSTER_NAME=$CLUSTER" -e "OPT_LOCAL_SLURM_DIR=$DIR" <<<"$env"; then
            comm="$(cat "/proc/$pid/comm" 2>/dev/null)" || continue
            alive "$pid" "$comm" || continue
            log "killing leftover $comm ($pid)"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
}

# --- commands ----------------------------------------------------------------
cmd_up() {
    local nodes=1
    while [ $# -gt 0 ]; do
        case "$1" in
            --nodes) nodes="${2:-}"; shift 2 ;;
            --nodes=*) nodes="${1#*=}"; shift ;;
            -h|--help) usage; exit 0 ;;
            *) usage >&2; die "unknown argument: $1" ;;
        esac
    done
    [[ "$nodes" =~ ^[12]$ ]] || die "--nodes must be 1 or 2, got '$nodes'"
    [ "$(id -u)" = 0 ] || die "needs root (daemons, /etc/hosts)"
    local exe
    for exe in slurmctld slurmd munged munge scontrol sinfo sbatch; do
        command -v "$exe" >/dev/null || die "$exe not found: apt-get install slurmctld slurmd slurm-client munge"
    done

    if slurmctld_alive && [ "$(configured_nodes)" != "$nodes" ]; then
        log "cluster has $(configured_nodes) node(s), $nodes wanted: restarting it"
        cmd_down
    fi
    write_config "$nodes"
    add_hosts_lines "$nodes"
    link_system_conf
    start_munged
    start_slurmctld
    local name
    for name in $(node_names "$nodes"); do start_slurmd "$name"; done
    wait_until 60 "nodes to become idle" nodes_ready || { sinfo -N -l >&2 || true; die "nodes did not come up; see $DIR/log"; }
    cmd_status
}

cmd_down() {
    cancel_all_jobs
    local f name
    for f in "$DIR"/run/slurmd-*.pid; do
        [ -e "$f" ] || continue
        name="$(basename "$f" .pid)"
        stop_pid "$(pid_of "$f")" slurmd
        rm -f "$f"
        log "stopped ${name}"
    done
    stop_pid "$(pid_of "$DIR/run/slurmctld.pid")" slurmctld
    rm -f "$DIR/run/slurmctld.pid"
    stop_pid "$(pid_of "$DIR/munge/munged.pid")" munged
    rm -f "$DIR/munge/munged.pid"
    sweep_leftovers
    unlink_system_conf
    log "down (config, state and logs kept in $DIR)"
}

cmd_status() {
    local name
    running() { if "$@"; then echo running; else echo stopped; fi; }
    echo "config     SLURM_CONF=$CONF"
    echo "munged     $(running munged_alive)"
    echo "slurmctld  $(running slurmctld_alive)"
    for name in $(node_names "$(configured_nodes)"); do
        echo "slurmd     $name: $(running slurmd_alive "$name")"
    done
    if ctld_answers; then
        echo
        sinfo -N -o '%12N %10P %8T %5c %8m %G'
        echo
        scontrol show partition "$PARTITION" | sed -n '1p;/^ *Nodes=/p;/^ *State=/p'
        echo
        squeue -o '%8i %12j %10T %8M %6D %R'
    fi
}

case "${1:-}" in
    up) shift; cmd_up "$@" ;;
    down) shift; [ $# -eq 0 ] || die "down takes no arguments"; cmd_down ;;
    status) cmd_status ;;
    -h|--help|help) usage ;;
    *) usage >&2; exit 2 ;;
esac
