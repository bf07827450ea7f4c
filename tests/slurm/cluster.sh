#!/usr/bin/env bash
# A one-node SLURM cluster from Debian's packages, for the SLURM test (tests/test_slurm.py).
#
#   tests/slurm/cluster.sh install   apt-get install the packages (root; no-op when present)
#   tests/slurm/cluster.sh start     start munged, slurmctld and slurmd; wait for an idle node
#   tests/slurm/cluster.sh stop      cancel our jobs, stop only the daemons this script started
#   tests/slurm/cluster.sh status    print the node and the queue
#
# Needs root (slurmd runs jobs as their user) and no systemd: the daemons are started by hand.
# The node has the machine's cores, a memory cap and two fake GPUs (gres gpu, File=/dev/null), so
# jobs that ask for --gpus=1 are scheduled as on a GPU cluster. No accounting (slurmdbd): sacct
# does not work, the profile's status command must be squeue (MinJobAge is kept at 300 s).
# State, logs and pid files live in $PANSEG_SLURM_STATE (default /tmp/panseg-slurm); the config
# must be /etc/slurm/slurm.conf (the job step plugin drops SLURM_CONF), so an existing
# slurm.conf not written by this script is never overwritten.
set -euo pipefail

STATE=${PANSEG_SLURM_STATE:-/tmp/panseg-slurm}
CONF_DIR=/etc/slurm
MARK="# written by panseg tests/slurm/cluster.sh"
START_TIMEOUT=${PANSEG_SLURM_START_TIMEOUT:-90}
PACKAGES=(slurmctld slurmd slurm-client munge)
# Fake GPUs, one device file each: nothing opens them (no device cgroups here).
FAKE_GPU_FILES=(/dev/null /dev/zero)
GPUS=${PANSEG_SLURM_GPUS:-2}
CLUSTER_NAME=panseg-test

die() { echo "cluster.sh: $*" >&2; exit 1; }
log() { echo "cluster.sh: $*" >&2; }

need_root() { [ "$(id -u)" = 0 ] || die "must run as root (slurmd and munged need it)"; }

have_packages() {
  command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
    && command -v munged >/dev/null
}

alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }

pid_of() { [ -s "$1" ] && cat "$1" || true; }

install() {
  need_root
  if have_packages; then log "SLURM packages already installed"; return; fi
  command -v apt-get >/dev/null || die "apt-get not found: install ${PACKAGES[*]} by hand"
  export DEBIAN_FRONTEND=noninteractive
  timeout 600 apt-get update -qq
  timeout 900 apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null
  have_packages || die "packages installed but slurmctld/slurmd/sbatch/munged not found"
}

write_config() {
  local host cpus mem
  host=$(hostname -s)
  cpus=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)  # nproc obeys OMP_NUM_THREADS
  # The node offers a share of the machine's memory, capped: jobs ask for mem_mb from config.
  mem=$(awk '/MemTotal/ {m = int($2 / 1024 * 0.8); print (m > 16000 ? 16000 : m)}' /proc/meminfo)
  if [ -e "$CONF_DIR/slurm.conf" ] && ! grep -qF "$MARK" "$CONF_DIR/slurm.conf"; then
    die "$CONF_DIR/slurm.conf exists and was not written by this script: not touching it"
  fi
  mkdir -p "$CONF_DIR" "$STATE/ctld" "$STATE/d"
  cat > "$CONF_DIR/slurm.conf" <<EOF
$MARK (state in $STATE)
ClusterName=$CLUSTER_NAME
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# A requeued job waits for the credential lifetime before it starts again (default 120 s).
AuthInfo=cred_expire=10
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
# No cgroups in a container: linuxproc tracking, no task plugin, no cgroup.conf.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=1000
GresTypes=gpu
# No slurmdbd: jobs stay visible to squeue for MinJobAge seconds after they end.
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
MinJobAge=300
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
# Look at pending jobs every 2 s (default 30 s): a requeued job starts as soon as it may.
SchedulerParameters=bf_interval=2
# A preempted or requeued job is killed with SIGTERM, then SIGKILL after KillWait seconds.
KillWait=10
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=60
NodeName=$host CPUs=$cpus RealMemory=$mem Gres=gpu:$GPUS State=UNKNOWN
PartitionName=panseg Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
  cat > "$CONF_DIR/gres.conf" <<EOF
$MARK
# Fake GPUs: SLURM schedules them like real ones (--gpus=1), nothing opens the devices.
AutoDetect=off
EOF
  local i
  for i in $(seq 1 "$GPUS"); do echo "Name=gpu File=${FAKE_GPU_FILES[$((i - 1))]}" >> "$CONF_DIR/gres.conf"; done
}

start_munge() {
  if munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
    log "munged already running (not ours: it will be left running)"
    return
  fi
  [ -s /etc/munge/munge.key ] || { mungekey --create --force >/dev/null 2>&1 || \
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 2>/dev/null; }
  chown munge:munge /etc/munge/munge.key && chmod 600 /etc/munge/munge.key
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /run/munge /var/log/munge /var/lib/munge
  runuser -u munge -- /usr/sbin/munged
  local i
  for i in $(seq 1 50); do
    if munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
      cp /run/munge/munged.pid "$STATE/munged.pid"
      return
    fi
    sleep 0.2
  done
  die "munged did not start (see /var/log/munge/munged.log)"
}

start() {
  need_root
  have_packages || die "SLURM is not installed: run '$0 install' first"
  mkdir -p "$STATE"
  if alive "$(pid_of "$STATE/slurmctld.pid")" || alive "$(pid_of "$STATE/slurmd.pid")"; then
    log "a cluster from $STATE is still running (an earlier run did not stop it): stopping it"
    stop
  fi
  if pgrep -x slurmctld >/dev/null || pgrep -x slurmd >/dev/null; then
    die "another slurmctld/slurmd runs on this machine: not starting a second cluster"
  fi
  rm -rf "$STATE/ctld" "$STATE/d" "$STATE"/*.pid "$STATE"/*.log
  write_config
  start_munge
  # -i: ignore saved state (a fresh cluster every time); both daemonize and write pid files.
  slurmctld -i
  slurmd
  local deadline=$((SECONDS + START_TIMEOUT)) state="" i
  for i in $(seq 1 50); do  # both daemonize; their pid files appear once they run
    [ -s "$STATE/slurmctld.pid" ] && [ -s "$STATE/slurmd.pid" ] && break
    sleep 0.2
  done
  while [ $SECONDS -lt $deadline ]; do
    alive "$(pid_of "$STATE/slurmctld.pid")" || { state="slurmctld exited"; break; }
    alive "$(pid_of "$STATE/slurmd.pid")" || { state="slurmd exited"; break; }
    state=$(timeout 10 sinfo -h -N -o %t 2>/dev/null | head -1 || true)
    case "$state" in
      idle) log "node $(hostname -s) idle after ${SECONDS}s"; return ;;
      drain*|down*|inval*|fail*)
        timeout 10 scontrol update nodename="$(hostname -s)" state=resume >/dev/null 2>&1 || true ;;
    esac
    sleep 1
  done
  log "no idle node (state '$state' after ${SECONDS}s); last log lines:"
  tail -n 20 "$STATE/slurmctld.log" "$STATE/slurmd.log" >&2 || true
  stop || true
  exit 1
}

stop_pid() {  # stop_pid NAME PIDFILE
  local pid
  pid=$(pid_of "$2")
  alive "$pid" || { rm -f "$2"; return 0; }
  kill -TERM "$pid" 2>/dev/null || true
  local i
  for i in $(seq 1 50); do alive "$pid" || break; sleep 0.2; done
  if alive "$pid"; then log "$1 ($pid) ignored SIGTERM: SIGKILL"; kill -KILL "$pid" 2>/dev/null || true; fi
  rm -f "$2"
}

job_processes() {  # pids whose environment says they belong to a job of this cluster
  local env pid
  for env in /proc/[0-9]*/environ; do
    pid=${env#/proc/}
    pid=${pid%/environ}
    [ "$pid" = "$$" ] && continue
    if { tr '\0' '\n' <"$env"; } 2>/dev/null | grep -qx "SLURM_CLUSTER_NAME=$CLUSTER_NAME"; then echo "$pid"; fi
  done
}

sweep_job_processes() {
  # proctrack/linuxproc follows parent links only: a job process whose parent exited (e.g. the
  # first attempt of a requeued job) escapes SLURM's kill. Every job process carries
  # SLURM_CLUSTER_NAME=panseg-test in its environment, so only this cluster's are ended here.
  local pids i
  pids=$(job_processes | tr '\n' ' ')
  [ -n "${pids// /}" ] || return 0
  log "ending processes left by this cluster's jobs: $pids"
  # shellcheck disable=SC2086
  kill -TERM $pids 2>/dev/null || true
  for i in $(seq 1 25); do [ -z "$(job_processes)" ] && return 0; sleep 0.2; done
  pids=$(job_processes | tr '\n' ' ')
  # shellcheck disable=SC2086
  [ -n "${pids// /}" ] && kill -KILL $pids 2>/dev/null || true
}

stop() {
  need_root
  if alive "$(pid_of "$STATE/slurmctld.pid")"; then
    # Every job on this cluster is ours: cancel them and wait until none is left running,
    # so no job step outlives the cluster.
    local jobs i
    jobs=$(timeout 10 squeue -h -o %i 2>/dev/null || true)
    if [ -n "$jobs" ]; then
      # shellcheck disable=SC2086
      timeout 10 scancel $jobs 2>/dev/null || true
      for i in $(seq 1 60); do
        [ -z "$(timeout 10 squeue -h -t R,CG,PD -o %i 2>/dev/null || true)" ] && break
        sleep 0.5
      done
    fi
  fi
  sweep_job_processes
  stop_pid slurmd "$STATE/slurmd.pid"
  stop_pid slurmctld "$STATE/slurmctld.pid"
  stop_pid munged "$STATE/munged.pid"
  # Without a cluster, a left-over slurm.conf makes every `scontrol show config` wait ~9 s for a
  # controller, and the SLURM executor plugin runs it whenever Snakemake starts.
  local f
  for f in "$CONF_DIR/slurm.conf" "$CONF_DIR/gres.conf"; do
    if [ -e "$f" ] && grep -qF "$MARK" "$f"; then rm -f "$f"; fi
  done
  log "stopped"
}

status() {
  timeout 10 sinfo -N -o "%N %t %c %m %G" || true
  timeout 10 squeue -o "%i %j %T %b %C %m %l %R" || true
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 install|start|stop|status" >&2; exit 2 ;;
esac
