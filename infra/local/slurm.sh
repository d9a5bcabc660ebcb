#!/usr/bin/env bash
# A single-node Slurm on this machine, for tests and for trying the Slurm backend: munged, slurmctld and slurmd
# (Debian: apt-get install slurmctld slurmd slurm-client munge), no systemd. With --accounting also MariaDB and
# slurmdbd (apt-get install mariadb-server slurmdbd), so `sacct` knows every job, also long after it ended.
# Everything (config, munge key and socket, database, state, logs) lives under DIR; the daemons talk over
# 127.0.0.1 only. Run it as root (slurmd starts each job as the user who submitted it, which needs root); CI does.
#
#   infra/local/slurm.sh start [--accounting] [DIR]   # prints the SLURM_CONF to export; returns once the node is idle
#   infra/local/slurm.sh stop  [DIR]
set -euo pipefail
action="${1:-start}"
shift || true
accounting=0
if [[ "${1:-}" == "--accounting" ]]; then accounting=1; shift; fi
root="${1:-${DUALTOKEN_SERVICES_DIR:-.services}/slurm}"
mkdir -p "$root"
root="$(cd "$root" && pwd)"

stop() {
  for name in slurmd slurmctld slurmdbd mariadbd munged; do
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
if [[ "$action" != "start" ]]; then echo "usage: $0 start [--accounting] [DIR] | stop [DIR]" >&2; exit 2; fi
trap 'echo "slurm.sh: start-up failed; logs in $root/log" >&2; stop' ERR

for tool in munged slurmctld slurmd sbatch sinfo; do
  command -v "$tool" >/dev/null || { echo "slurm.sh: $tool not found: apt-get install slurmctld slurmd slurm-client munge" >&2; exit 2; }
done
if ((accounting)); then
  for tool in mariadbd mariadb-install-db mariadb-admin mariadb slurmdbd sacct; do
    command -v "$tool" >/dev/null || { echo "slurm.sh: $tool not found: apt-get install mariadb-server slurmdbd" >&2; exit 2; }
  done
fi
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

accounting_conf="AccountingStorageType=accounting_storage/none"
if ((accounting)); then
  # MariaDB for slurmdbd's tables: its own data folder, socket and loopback port; root gets in over the socket.
  db_port="$(free_port)"; dbd_port="$(free_port)"
  if [[ ! -d "$root/mariadb/mysql" ]]; then
    mariadb-install-db --no-defaults --datadir="$root/mariadb" --user="$(id -un)" >"$root/log/mariadb-install.log" 2>&1
  fi
  setsid mariadbd --no-defaults --datadir="$root/mariadb" --socket="$root/mariadb.sock" --port="$db_port" \
    --bind-address=127.0.0.1 --skip-name-resolve --pid-file="$root/mariadbd.pid" --user="$(id -un)" \
    --log-error="$root/log/mariadb.log" </dev/null >/dev/null 2>&1 &
  up=0
  for _ in $(seq 150); do mariadb-admin --socket="$root/mariadb.sock" ping >/dev/null 2>&1 && { up=1; break; }; sleep 0.2; done
  ((up)) || { echo "slurm.sh: MariaDB did not come up (log: $root/log/mariadb.log)" >&2; false; }
  db_password="$(head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')"
  mariadb --socket="$root/mariadb.sock" -e "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1';
    ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$db_password';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"
  (umask 077 && cat >"$root/slurmdbd.conf" <<DBD
AuthType=auth/munge
AuthInfo=socket=$root/munge.socket
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$dbd_port
SlurmUser=$(id -un)
PidFile=$root/slurmdbd.pid
LogFile=$root/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$db_port
StorageUser=slurm
StoragePass=$db_password
StorageLoc=slurm_acct_db
DBD
)
  accounting_conf="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$dbd_port
AccountingStoragePass=$root/munge.socket"
fi

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
DefMemPerCPU=$((mem_mb / cpus))
MpiDefault=none
JobCompType=jobcomp/none
$accounting_conf
JobAcctGatherType=jobacct_gather/none
MinJobAge=600
NodeName=localhost NodeAddr=127.0.0.1 NodeHostname=localhost CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONF
export SLURM_CONF="$root/slurm.conf"
if ((accounting)); then  # slurmdbd reads slurmdbd.conf beside SLURM_CONF; the cluster registers itself
  setsid slurmdbd -D >>"$root/log/slurmdbd.out" 2>&1 </dev/null &
  up=0
  for _ in $(seq 150); do (echo >"/dev/tcp/127.0.0.1/$dbd_port") 2>/dev/null && { up=1; break; }; sleep 0.2; done
  ((up)) || { echo "slurm.sh: slurmdbd did not come up (log: $root/log/slurmdbd.log)" >&2; false; }
fi
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
