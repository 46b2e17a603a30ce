#!/usr/bin/env bash
# stop-ceph.sh BASE_DIR [--purge]
#
# The other half of start-ceph.sh (iot-config's test cluster, `nox -s ceph`). Tears down what start-ceph.sh BASE_DIR started: unmounts every ceph-fuse
# mount under BASE_DIR, then stops radosgw, mds, osd, mgr, mon using the pid
# files in BASE_DIR/cluster/run (SIGTERM, then SIGKILL after 20 s). Only PIDs
# from those pid files whose command line is a Ceph binary are signalled, plus
# any Ceph daemon whose environment has CEPH_CONF=BASE_DIR/cluster/ceph.conf.
# Never kills by name.
# --purge also deletes BASE_DIR/cluster (all cluster state and logs).
set -uo pipefail

BASE=${1:?usage: stop-ceph.sh BASE_DIR [--purge]}
PURGE=${2:-}
[ -d "$BASE" ] || { echo "[stop-ceph] $BASE does not exist" >&2; exit 0; }
BASE=$(cd "$BASE" && pwd)
C=$BASE/cluster
rc=0

is_ceph_pid() { # PID -> true if it is alive and runs a ceph binary
  local cmd
  cmd=$(tr '\0' ' ' < "/proc/$1/cmdline" 2>/dev/null) || return 1
  case "$cmd" in ceph-*|/usr/bin/ceph-*|radosgw*|/usr/bin/radosgw*) return 0 ;; *) return 1 ;; esac
}

stop_pid() { # PIDFILE
  local f=$1 pid i
  [ -f "$f" ] || return 0
  pid=$(cat "$f" 2>/dev/null)
  if [ -n "$pid" ] && is_ceph_pid "$pid"; then
    local t0=$EPOCHREALTIME
    kill -TERM "$pid" 2>/dev/null
    for i in $(seq 1 40); do is_ceph_pid "$pid" || break; sleep 0.5; done
    if is_ceph_pid "$pid"; then
      echo "[stop-ceph] $(basename "$f" .pid) ($pid) did not stop on SIGTERM, sending SIGKILL" >&2
      kill -KILL "$pid" 2>/dev/null; sleep 0.5
    fi
    awk -v a="$t0" -v b="$EPOCHREALTIME" -v n="$(basename "$f" .pid)" 'BEGIN{printf "[stop-ceph] %s stopped in %.1fs\n", n, b-a}' >&2
  fi
  rm -f "$f"
}

# 1. unmount all ceph-fuse mounts below BASE (the one start-ceph.sh made and any
#    extra ones made by tests), then make sure their ceph-fuse processes are gone
while read -r _ mp type _; do
  mp=$(printf '%b' "$mp")            # /proc/mounts escapes spaces as \040
  case "$mp" in "$BASE"/*) ;; *) continue ;; esac
  [ "$type" = fuse.ceph-fuse ] || continue
  if ! umount "$mp" 2>/dev/null; then
    echo "[stop-ceph] umount $mp busy; lazy unmount" >&2
    umount -l "$mp" || rc=1
  fi
done < /proc/mounts
for f in "$C"/run/ceph-fuse*.pid "$C"/run/client.admin.pid; do stop_pid "$f"; done

# 2. daemons, clients of the cluster first
for f in "$C"/run/client.rgw.*.pid; do stop_pid "$f"; done
stop_pid "$C/run/mds.a.pid"
stop_pid "$C/run/osd.0.pid"
stop_pid "$C/run/mgr.x.pid"
stop_pid "$C/run/mon.a.pid"

# 3. leftovers: a Ceph binary whose environment has CEPH_CONF=<this cluster's
#    conf> was started for this cluster (start-ceph.sh exports it); stop those too
leftovers() {
  local d pid exe
  for d in /proc/[0-9]*; do
    pid=${d#/proc/}
    exe=$(readlink "$d/exe" 2>/dev/null) || continue
    case "${exe##*/}" in ceph-mon|ceph-mgr|ceph-osd|ceph-mds|ceph-fuse|radosgw) ;; *) continue ;; esac
    tr '\0' '\n' < "$d/environ" 2>/dev/null | grep -qx "CEPH_CONF=$C/ceph.conf" && echo "$pid"
  done
}
for pid in $(leftovers); do
  echo "[stop-ceph] leftover $(readlink /proc/$pid/exe) pid $pid: SIGKILL" >&2
  kill -KILL "$pid" 2>/dev/null
done
sleep 0.2
if [ -n "$(leftovers)" ]; then echo "[stop-ceph] WARNING: still running: $(leftovers | tr '\n' ' ')" >&2; rc=1; fi
if grep -q " $BASE/[^ ]* fuse.ceph-fuse " /proc/mounts; then
  echo "[stop-ceph] WARNING: a ceph-fuse mount is still present below $BASE" >&2; rc=1
fi

if [ "$PURGE" = --purge ]; then rm -rf "$C"; fi
echo "[stop-ceph] stopped (rc=$rc)" >&2
exit $rc
