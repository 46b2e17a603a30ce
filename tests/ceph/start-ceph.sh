#!/usr/bin/env bash
# start-ceph.sh BASE_DIR [PORT_BASE]
#
# A throw-away, single-node Ceph 16 (pacific) cluster for iot-config's integration tests
# (`nox -s ceph`): the store contract and two server replicas on a real CephFS, and the S3
# backend on radosgw. Built by hand from Debian packages, in the spirit of Ceph's vstart.sh:
# 1 mon, 1 mgr, 1 OSD (memstore), 1 MDS, a CephFS "cephfs" (pools cephfs_metadata and
# cephfs_data, size 1), no cephx auth, everything on 127.0.0.1, mounted with ceph-fuse at
# BASE_DIR/mnt. Prints the mount point on stdout (last line) when done. What the tests rely on
# from it is in docs/storage.md.
#
# Optional: OSD_STORE=bluestore puts the OSD on a 2 GiB sparse file instead of RAM.
# Optional: WITH_RGW=1 also starts radosgw (S3 API) on 127.0.0.1:PORT_BASE+2
# and creates an S3 user (access key "testkey", secret "testsecret").
#
# Ports used (all on 127.0.0.1): PORT_BASE (mon msgr2), PORT_BASE+1 (mon msgr1),
# PORT_BASE+2 (radosgw, optional), PORT_BASE+10 .. PORT_BASE+39 (osd/mds/mgr),
# i.e. the block PORT_BASE .. PORT_BASE+39.
# Needs root (apt-get, FUSE mount) and /dev/fuse. Installs the Debian packages if missing.
# Stop with stop-ceph.sh BASE_DIR (add --purge to delete the data); always stop it in a
# trap or a finaliser.
set -euo pipefail

BASE=${1:?usage: start-ceph.sh BASE_DIR [PORT_BASE]}
PORT=${2:-18300}
WITH_RGW=${WITH_RGW:-0}
OSD_STORE=${OSD_STORE:-memstore}   # memstore (RAM, fastest) or bluestore (2 GiB sparse file)
case "$OSD_STORE" in memstore|bluestore) ;; *) echo "OSD_STORE must be memstore or bluestore" >&2; exit 2 ;; esac

BASE=$(mkdir -p "$BASE" && cd "$BASE" && pwd)
C=$BASE/cluster           # daemon state, logs, sockets, pid files
MNT=$BASE/mnt
CONF=$C/ceph.conf
export CEPH_CONF=$CONF

t0=$EPOCHREALTIME
log() { awk -v a="$t0" -v b="$EPOCHREALTIME" -v m="$*" 'BEGIN{printf "[start-ceph %6.1fs] %s\n", b-a, m}' >&2; }
die() { log "ERROR: $*"; exit 1; }
# on any failure, tear down what was started (set KEEP_ON_FAILURE=1 to keep it for debugging)
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
on_exit() {
  local rc=$?
  if [ $rc -ne 0 ] && [ "${STARTED:-0}" = 1 ] && [ "${KEEP_ON_FAILURE:-0}" != 1 ]; then
    log "start failed (rc=$rc), logs in $C/log; tearing down"
    bash "$HERE/stop-ceph.sh" "$BASE" >&2 || true
  fi
}
trap on_exit EXIT

# --- 1. packages -------------------------------------------------------------
PKGS="ceph-mon ceph-mgr ceph-osd ceph-mds ceph-fuse ceph-common python3-cephfs"
[ "$WITH_RGW" = 1 ] && PKGS="$PKGS radosgw"
need=""
for p in $PKGS; do dpkg -s "$p" >/dev/null 2>&1 || need="$need $p"; done
if [ -n "$need" ]; then
  echo "[start-ceph] installing:$need" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=300 update -qq >&2
  apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends $need >&2
  t0=$EPOCHREALTIME   # time the cluster start-up separately from the install
  log "packages installed"
fi

# --- 2. fresh state ------------------------------------------------------------
if [ -d "$C/run" ] && ls "$C"/run/*.pid >/dev/null 2>&1; then
  for f in "$C"/run/*.pid; do
    if kill -0 "$(cat "$f")" 2>/dev/null; then die "$f: a daemon is still running; run stop-ceph.sh $BASE first"; fi
  done
fi
mountpoint -q "$MNT" 2>/dev/null && die "$MNT is still mounted; run stop-ceph.sh $BASE first"
rm -rf "$C"
STARTED=1
mkdir -p "$C"/{run,log,crash,mon.a,mgr.x,osd.0,mds.a} "$MNT"

FSID=$(uuidgen)
MONADDR="[v2:127.0.0.1:$PORT,v1:127.0.0.1:$((PORT+1))]"
PMIN=$((PORT+10)); PMAX=$((PORT+39))   # osd needs 8 ports, mds 2, mgr 2

cat > "$CONF" <<EOF
[global]
fsid = $FSID
mon host = $MONADDR
public addr = 127.0.0.1
cluster addr = 127.0.0.1
ms bind port min = $PMIN
ms bind port max = $PMAX
ms bind ipv6 = false

auth cluster required = none
auth service required = none
auth client required = none
mon warn on insecure global id reclaim = false
mon warn on insecure global id reclaim allowed = false

run dir = $C/run
crash dir = $C/crash
admin socket = $C/run/\$name.asok
pid file = $C/run/\$name.pid
log file = $C/log/\$name.log
mon cluster log file = $C/log/cluster.log
keyring = $C/keyring
log to stderr = false
err to stderr = true

osd pool default size = 1
osd pool default min size = 1
osd pool default pg autoscale mode = off
osd pool default pg num = 8
osd pool default pgp num = 8
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
mon data avail warn = 2
mon data avail crit = 1
mon osd nearfull ratio = .95
mon osd backfillfull ratio = .96
mon osd full ratio = .97

[mon]
mon data = $C/mon.\$id
mon initial members = a

[mgr]
mgr data = $C/mgr.\$id
mgr initial modules = iostat

[osd]
osd data = $C/osd.\$id
osd objectstore = $OSD_STORE
memstore device bytes = 1073741824
bluestore block create = true
bluestore block size = 2147483648
bluestore fsck on mount = false
bluestore cache autotune = false
bluestore cache size = 134217728
osd memory target = 939524096
osd class load list = *
osd class default list = *

[mds]
mds data = $C/mds.\$id
# default 5 s: a client blocks up to one tick when another client holds caps on
# the same file (cross-client os.replace/read contention); 0.2 s bounds that stall
mds tick interval = 0.2

[client]
log file = $C/log/\$name.\$pid.log
admin socket = $C/run/\$name.\$pid.asok

[client.rgw.a]
rgw frontends = beast endpoint=127.0.0.1:$((PORT+2))
rgw data = $C/rgw.a
rgw dns name = localhost
rgw enable usage log = false
# radosgw's built-in defaults ask for cephx and a "secure" mon connection,
# which auth=none cannot provide (monclient: get_initial_auth_request returned -13)
ms mon client mode = crc secure
client mount timeout = 60
EOF

# keyrings are not used (auth = none) but ceph-mon --mkfs wants one
ceph-authtool --create-keyring "$C/keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
ceph-authtool "$C/keyring" --gen-key -n client.admin --cap mon 'allow *' --cap osd 'allow *' \
  --cap mds 'allow *' --cap mgr 'allow *' >/dev/null

wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...
  local secs=$1 what=$2; shift 2
  local end=$(( $(date +%s) + secs ))
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$end" ] || die "timed out waiting for $what (see $C/log)"
    sleep 0.5
  done
}
ceph_() { timeout 30 ceph --connect-timeout 10 "$@"; }

# --- 3. mon --------------------------------------------------------------------
monmaptool --create --fsid "$FSID" --addv a "$MONADDR" "$C/monmap" >/dev/null
ceph-mon --mkfs -i a --monmap "$C/monmap" --keyring "$C/keyring"
ceph-mon -i a >&2
wait_for 60 "mon" ceph_ mon stat
log "mon up"

# --- 4. mgr --------------------------------------------------------------------
ceph-mgr -i x >&2
log "mgr started"

# --- 5. osd (memstore/bluestore) -----------------------------------------------------
OSD_UUID=$(uuidgen)
OSD_ID=$(ceph_ osd new "$OSD_UUID")
[ "$OSD_ID" = 0 ] || die "unexpected osd id '$OSD_ID'"
ceph-osd -i 0 --mkfs --osd-uuid "$OSD_UUID" 2>>"$C/log/osd-mkfs.log" \
  || die "ceph-osd --mkfs failed: $(grep -a ERROR "$C/log/osd-mkfs.log" | tail -1)"
ceph-osd -i 0 >&2
wait_for 60 "osd up" bash -c "ceph --connect-timeout 10 osd dump 2>/dev/null | grep -q '^osd.0 up'"
log "osd up"

# --- 6. CephFS -----------------------------------------------------------------
ceph_ osd pool create cephfs_metadata 8 8 replicated >>"$C/log/setup.log" 2>&1
ceph_ osd pool create cephfs_data 8 8 replicated >>"$C/log/setup.log" 2>&1
ceph_ fs new cephfs cephfs_metadata cephfs_data >>"$C/log/setup.log" 2>&1 \
  || die "ceph fs new failed: $(tail -2 "$C/log/setup.log")"
ceph-mds -i a >&2   # it prints "starting mds.a at" on stdout
wait_for 90 "mds active" bash -c "ceph --connect-timeout 10 fs dump 2>/dev/null | grep -q 'up:active'"
log "mds active"

# --- 7. mount ------------------------------------------------------------------
ceph-fuse --id admin --client_fs cephfs --pid-file "$C/run/ceph-fuse.pid" "$MNT" >"$C/log/ceph-fuse.out" 2>&1 \
  || die "ceph-fuse failed: $(cat "$C/log/ceph-fuse.out")"
wait_for 30 "mount" mountpoint -q "$MNT"
log "cephfs mounted at $MNT"

# --- 8. optional radosgw -------------------------------------------------------
if [ "$WITH_RGW" = 1 ]; then
  mkdir -p "$C/rgw.a"
  radosgw -n client.rgw.a >&2
  wait_for 90 "radosgw" bash -c "exec 3<>/dev/tcp/127.0.0.1/$((PORT+2))"
  radosgw-admin -n client.rgw.a user create --uid=test --display-name=test \
    --access-key=testkey --secret-key=testsecret >/dev/null 2>&1 || \
    radosgw-admin -n client.rgw.a user info --uid=test >/dev/null
  log "radosgw up at http://127.0.0.1:$((PORT+2)) (access key testkey / testsecret)"
fi

echo "$MNT"
