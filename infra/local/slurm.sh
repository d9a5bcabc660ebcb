#!/usr/bin/env bash
# A single-node Slurm on this machine, for tests and for trying the Slurm backend: munged, slurmctld and slurmd
# (Debian: apt-get install slurmctld slurmd slurm-client munge), no systemd, no accounting database.
# Everything (config, munge key and socket, state, logs) lives under DIR; the daemons talk over 127.0.0.1 only.
# Run it as root (slurmd starts each job as the user who submitted it, which needs root); CI does.
#
#   infra/local/slurm.sh start [DIR]   # prints the SLURM_CONF to export; returns once the node is idle
#   infra/local/slurm.sh stop  [DIR]
set -euo pipefail
action="${1:-start}"
root="${2:-${DUALTOKEN_SERVICES_DIR:-.services}/slurm}"
mkdir -p "$root"
root="$(cd "$root" && pwd)"

stop() {
  for name in slurmd slurmctld munged; do
    pidfile="$root/$name.pid"
    [[ -f "$pidfile" ]] || continue
    pid="$(cat "$pidfile")"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$pidfile"
  done
}

if [[ "$action" == "stop" ]]; then stop; exit 0; fi
if [[ "$action" != "start" ]]; then echo "usage: $0 start|stop [DIR]" >&2; exit 2; fi

for tool in munged slurmctld slurmd sbatch sinfo; do
  command -v "$tool" >/dev/null || { echo "slurm.sh: $tool not found: apt-get install slurmctld slurmd slurm-client munge" >&2; exit 2; }
done
stop  # a leftover cluster from an earlier start in the same DIR
mkdir -p "$root/state" "$root/spool" "$root/log"
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
ctld_port="$(free_port)"; slurmd_port="$(free_port)"
while [[ "$slurmd_port" == "$ctld_port" ]]; do slurmd_port="$(free_port)"; done
cpus="$(nproc)"
mem_mb="$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)"

if [[ ! -f "$root/munge.key" ]]; then
  (umask 077 && head -c 1024 /dev/urandom >"$root/munge.key")
fi
munged --key-file="$root/munge.key" --socket="$root/munge.socket" --pid-file="$root/munged.pid" \
  --log-file="$root/log/munged.log" --seed-file="$root/munge.seed" --force

cat >"$root/slurm.conf" <<CONF
ClusterName=dualtoken-local
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=$(id -un)
SlurmdUser=$(id -un)
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$root/munge.socket
StateSaveLocation=$root/state
SlurmdSpoolDir=$root/spool
SlurmctldPidFile=$root/slurmctld.pid
SlurmdPidFile=$root/slurmd.pid
SlurmctldLogFile=$root/log/slurmctld.log
SlurmdLogFile=$root/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
MpiDefault=none
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
MinJobAge=600
NodeName=localhost NodeAddr=127.0.0.1 NodeHostname=localhost CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONF
export SLURM_CONF="$root/slurm.conf"
setsid slurmctld -D -f "$SLURM_CONF" >>"$root/log/slurmctld.out" 2>&1 </dev/null &
setsid slurmd -D -N localhost -f "$SLURM_CONF" >>"$root/log/slurmd.out" 2>&1 </dev/null &
for _ in $(seq 150); do
  [[ "$(sinfo -h -o %T 2>/dev/null)" == "idle" ]] && { echo "export SLURM_CONF=$SLURM_CONF"; exit 0; }
  sleep 0.2
done
echo "slurm.sh: the node did not come up; logs in $root/log:" >&2
tail -n 20 "$root"/log/*.log "$root"/log/*.out >&2 || true
stop
exit 1
