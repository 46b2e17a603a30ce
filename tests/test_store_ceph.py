"""The store contract on a real CephFS, through two separate ceph-fuse mounts (two clients).

Production runs several server replicas on one CephFS directory, each with its own client. Here
the first mount is the one ``IOT_CONFIG_TEST_CEPHFS`` names (``nox -s ceph`` starts a throw-away
cluster with ``tests/ceph/start-ceph.sh`` and sets it); this module adds a second ceph-fuse mount
of the same filesystem, and the contract's "second client", the cross-process races and the
SIGKILL-mid-write test use both. Without the variable every test here is skipped.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_cas_processes import MAC as COUNTER_MAC
from test_cas_processes import run_increments
from test_crash import test_sigkilled_writer_never_tears_the_document as sigkill_check

from iot_config_core import ConfigStore, open_store
from iot_config_core.testing import MAC_A, PosixStoreContract

ENV_MOUNT = "IOT_CONFIG_TEST_CEPHFS"
ENV_CONF = "IOT_CONFIG_TEST_CEPH_CONF"


root_of = PosixStoreContract.root_of


def _mount_second(conf: Path, mountpoint: Path, pid_file: Path) -> None:
    env = {**os.environ, "CEPH_CONF": str(conf)}
    subprocess.run(
        [
            "ceph-fuse",
            "--id",
            "admin",
            "--client_fs",
            "cephfs",
            "--pid-file",
            str(pid_file),
            str(mountpoint),
        ],
        env=env,
        check=True,
        timeout=60,
        capture_output=True,
    )
    deadline = time.monotonic() + 30
    while not os.path.ismount(mountpoint):
        if time.monotonic() > deadline:
            raise RuntimeError(f"second ceph-fuse mount at {mountpoint} did not appear")
        time.sleep(0.1)


def _unmount(mountpoint: Path) -> None:
    if subprocess.run(["umount", str(mountpoint)], check=False, timeout=60).returncode != 0:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False, timeout=60)


@pytest.fixture(scope="module")
def ceph_dirs() -> Iterator[tuple[Path, Path]]:
    """One fresh directory on the CephFS, as seen through the first and the second mount."""
    mount = os.environ.get(ENV_MOUNT)
    if not mount:
        pytest.skip(f"set {ENV_MOUNT}=<ceph-fuse mount point> (nox -s ceph does)")
    first_mount = Path(mount)
    assert os.path.ismount(first_mount), f"{ENV_MOUNT}={mount} is not a mount point"
    conf = Path(os.environ.get(ENV_CONF, first_mount.parent / "cluster" / "ceph.conf"))
    tag = uuid.uuid4().hex[:12]
    work = first_mount / f"iot-config-tests-{tag}"
    work.mkdir()
    # beside the first mount, so stop-ceph.sh unmounts it too if this process dies
    second_mount = first_mount.parent / f"mnt-second-{tag}"
    second_mount.mkdir()
    try:
        _mount_second(conf, second_mount, conf.parent / "run" / f"ceph-fuse-second-{tag}.pid")
        try:
            yield work, second_mount / work.name
        finally:
            _unmount(second_mount)
    finally:
        second_mount.rmdir()
        shutil.rmtree(work, ignore_errors=True)


class TestCephfsStore(PosixStoreContract):
    # cross-client replaces on CephFS wait for capability hand-offs (mds tick): fewer examples
    counter_increments = 8

    @pytest.fixture(autouse=True)
    def _dirs(self, ceph_dirs: tuple[Path, Path]) -> None:
        self.first, self.second = ceph_dirs
        self.base = self.first

    def make_second_client(self, store: ConfigStore) -> ConfigStore:
        """The same directory through the second ceph-fuse mount: another client."""
        return open_store(str(self.second / root_of(store).relative_to(self.first)))

    # -- CephFS specifics -------------------------------------------------------------------------

    def test_hand_edit_on_one_mount_is_served_by_the_other(self, store: ConfigStore) -> None:
        other = self.make_second_client(store)
        store.put(MAC_A, {"deviceName": "before"})
        assert other.get_raw(MAC_A).data == store.get_raw(MAC_A).data  # now cached on both
        self.write_raw(store, MAC_A.file_name, b'{"deviceName": "after"}\n')
        assert other.get_raw(MAC_A).data == b'{"deviceName": "after"}\n'
        assert [s.device_name for s in other.list()] == ["after"]

    @pytest.mark.slow
    def test_sigkilled_writer_never_tears_the_document_on_cephfs(self) -> None:
        sigkill_check(Path(tempfile.mkdtemp(dir=self.first)))

    @pytest.mark.slow
    def test_processes_on_two_mounts_lose_no_update(self) -> None:
        processes, increments = 4, 10
        first = Path(tempfile.mkdtemp(dir=self.first))
        roots = [first, self.second / first.name]
        store = open_store(str(first))
        store.put(COUNTER_MAC, {"count": 0})
        retries = run_increments([str(root) for root in roots], processes, increments)
        assert store.get(COUNTER_MAC).content == {"count": processes * increments}, retries
        assert open_store(str(roots[1])).get(COUNTER_MAC).content == {
            "count": processes * increments
        }
