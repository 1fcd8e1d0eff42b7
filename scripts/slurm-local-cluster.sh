#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, to run the workflow's SLURM profile for real
# (docs/deployment.md "A test cluster"). Debian/Ubuntu, as root; not part of CI.
#
#   scripts/slurm-local-cluster.sh start    install what is missing (slurm-wlm, slurmdbd, munge,
#                                          mariadb-server), write the configs, start munged, mariadbd,
#                                          slurmdbd, slurmctld and slurmd
#   scripts/slurm-local-cluster.sh status   the daemons' process ids, sinfo, the last jobs
#   scripts/slurm-local-cluster.sh stop     stop every daemon it started, by process id
#
# One partition `cpu` with this node's CPUs (VIDIDI_SLURM_CPUS, default 2) and no GPUs. Accounting
# through slurmdbd (MariaDB) is not optional: the Snakemake plugin polls job states with `sacct`, and
# without accounting a finished job is never seen as finished. No cgroups: ProctrackType=linuxproc,
# TaskPlugin=task/none, so it runs in containers too. The configs go to /etc/slurm (where the clients
# look); the state, logs and pid files of this cluster to $VIDIDI_SLURM_DIR (default /var/tmp/vididi-slurm).
set -euo pipefail

STATE=${VIDIDI_SLURM_DIR:-/var/tmp/vididi-slurm}
CPUS=${VIDIDI_SLURM_CPUS:-2}
NODE=$(hostname -s)
DAEMONS=(slurmd slurmctld slurmdbd mariadbd munged)  # stop order

die() { echo "slurm-local-cluster: $*" >&2; exit 1; }
pid_of() { local f="$STATE/run/$1.pid"; [[ -s $f ]] && kill -0 "$(cat "$f")" 2>/dev/null && cat "$f"; }
wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
  local secs=$1 what=$2; shift 2
  for ((i = 0; i < secs * 2; i++)); do "$@" >/dev/null 2>&1 && return 0; sleep 0.5; done
  die "$what did not come up in ${secs}s (logs: $STATE/log/)"
}

install() {
  local missing=()
  command -v slurmctld >/dev/null || missing+=(slurm-wlm)
  command -v slurmdbd >/dev/null || missing+=(slurmdbd)
  command -v munged >/dev/null || missing+=(munge)
  command -v mariadbd >/dev/null || missing+=(mariadb-server)
  ((${#missing[@]})) || return 0
  [[ $(id -u) = 0 ]] || die "needs root to install ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null \
    || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null; }
}

configure() {
  mkdir -p "$STATE"/{run,log,ctld,slurmd,mysql} /etc/slurm /run/munge /run/mysqld
  local mem; mem=$(awk '/MemTotal/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)
  cat > /etc/slurm/slurm.conf <<CONF
# written by scripts/slurm-local-cluster.sh
ClusterName=vididi
SlurmctldHost=$NODE
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MinJobAge=300
NodeName=$NODE CPUs=$CPUS RealMemory=$mem State=UNKNOWN
PartitionName=cpu Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
CONF
  cat > /etc/slurm/slurmdbd.conf <<CONF
# written by scripts/slurm-local-cluster.sh
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=localhost
StoragePort=3306
StorageUser=slurm
StoragePass=vididi-slurm
StorageLoc=slurm_acct_db
PidFile=$STATE/run/slurmdbd.pid
LogFile=$STATE/log/slurmdbd.log
CONF
  chmod 600 /etc/slurm/slurmdbd.conf
  [[ -s /etc/munge/munge.key ]] || { mkdir -p /etc/munge; dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null; }
  chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge 2>/dev/null || true
  chmod 400 /etc/munge/munge.key
  chown -R mysql:mysql "$STATE/mysql" /run/mysqld
  [[ -d $STATE/mysql/mysql ]] || mariadb-install-db --user=mysql --datadir="$STATE/mysql" >"$STATE/log/mariadb-install.log" 2>&1
}

start() {
  [[ $(id -u) = 0 ]] || die "start: needs root"
  install
  configure
  if [[ -z $(pid_of munged || true) ]]; then
    runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/munged.pid
    wait_for 10 munged test -s /run/munge/munged.pid
    cp /run/munge/munged.pid "$STATE/run/munged.pid"
  fi
  if [[ -z $(pid_of mariadbd || true) ]]; then
    /usr/sbin/mariadbd --user=mysql --datadir="$STATE/mysql" --socket=/run/mysqld/mysqld.sock --port=3306 \
      --bind-address=127.0.0.1 --pid-file=/run/mysqld/mariadbd.pid --log-error="$STATE/mysql/mariadb.log" &
    echo $! > "$STATE/run/mariadbd.pid"
    wait_for 30 mariadbd mysqladmin --socket=/run/mysqld/mysqld.sock ping
    mysql --socket=/run/mysqld/mysqld.sock -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'vididi-slurm';
      CREATE DATABASE IF NOT EXISTS slurm_acct_db; GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
  fi
  if [[ -z $(pid_of slurmdbd || true) ]]; then
    /usr/sbin/slurmdbd
    wait_for 30 slurmdbd sacctmgr -n show cluster
  fi
  sacctmgr -i -Q add cluster vididi >/dev/null 2>&1 || true
  sacctmgr -i -Q add account vididi Cluster=vididi >/dev/null 2>&1 || true
  sacctmgr -i -Q add user "$(id -un)" Account=vididi Cluster=vididi >/dev/null 2>&1 || true
  [[ -n $(pid_of slurmctld || true) ]] || /usr/sbin/slurmctld
  wait_for 30 slurmctld scontrol ping
  [[ -n $(pid_of slurmd || true) ]] || /usr/sbin/slurmd
  wait_for 30 "slurmd (node $NODE idle)" bash -c "sinfo -h -N -o %t | grep -qx idle"
  scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true
  status
}

status() {
  local d
  for d in "${DAEMONS[@]}"; do printf '%-10s %s\n' "$d" "$(pid_of "$d" || echo 'not running')"; done
  if [[ -n $(pid_of slurmctld || true) ]]; then
    sinfo
    sacct -X -n -S now-1days -o JobID,JobName%30,State,ExitCode,Elapsed 2>/dev/null | tail -n 20 || true
  fi
}

stop() {
  local d pid
  for d in "${DAEMONS[@]}"; do
    pid=$(pid_of "$d" || true)
    [[ -n $pid ]] || continue
    kill "$pid"
    for ((i = 0; i < 40; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -0 "$pid" 2>/dev/null && { echo "$d ($pid) did not stop; sending KILL"; kill -9 "$pid"; }
    echo "stopped $d ($pid)"
    rm -f "$STATE/run/$d.pid"
  done
}

case ${1:-} in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) die "usage: $0 start|stop|status" ;;
esac
