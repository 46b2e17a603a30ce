"""A Linux inotify watch on one directory: which names in it changed, without a `stat` per file.

A warm listing of a local store must see a change by anyone on the next call, and the `stat` of
every file is what that costs without help. The kernel queues an inotify event *inside* the
system call that changes a file (write, truncate, chmod, utime, create, rename, unlink), before
that call returns, so a change that returned before a listing starts is already in the queue
when the listing reads it. Reading the queue is one non-blocking ``read``; only the named files
need a `stat` after it.

Only where the kernel sees every writer: on a local filesystem (`sees_every_writer`), not on a
network or FUSE filesystem (CephFS, NFS, ceph-fuse), where other clients' changes never pass
through this kernel. Not visible even there (the caller's job, see `iot_config_core.posix_backend`):
writes through a shared ``mmap``, writes through another hard link or mount of a file, a
symlink's target, and anything that happened while the queue overflowed (then `drain` says so).
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import struct
import sys
import weakref
from collections.abc import Mapping
from typing import Final

__all__ = ["LOCAL_FILESYSTEMS", "DirectoryWatch", "filesystem_magic", "sees_every_writer"]

log = logging.getLogger(__name__)

#: ``statfs`` magic numbers of filesystems whose every change passes through this kernel's VFS
#: (so through inotify). An allow-list: anything else, known or not, is not watched.
LOCAL_FILESYSTEMS: Final[Mapping[int, str]] = {
    0xEF53: "ext2/ext3/ext4",
    0x58465342: "xfs",
    0x9123683E: "btrfs",
    0x01021994: "tmpfs",
}

# From <sys/inotify.h>; the same values on every Linux architecture.
_IN_MODIFY = 0x00000002
_IN_ATTRIB = 0x00000004
_IN_CLOSE_WRITE = 0x00000008
_IN_MOVED_FROM = 0x00000040
_IN_MOVED_TO = 0x00000080
_IN_CREATE = 0x00000100
_IN_DELETE = 0x00000200
_IN_DELETE_SELF = 0x00000400
_IN_MOVE_SELF = 0x00000800
_IN_UNMOUNT = 0x00002000
_IN_Q_OVERFLOW = 0x00004000
_IN_IGNORED = 0x00008000
_IN_ONLYDIR = 0x01000000
_WATCHED = (
    _IN_MODIFY
    | _IN_ATTRIB
    | _IN_CLOSE_WRITE
    | _IN_MOVED_FROM
    | _IN_MOVED_TO
    | _IN_CREATE
    | _IN_DELETE
    | _IN_DELETE_SELF
    | _IN_MOVE_SELF
)
# The watch is gone or events were lost: only a full scan knows the directory now.
_LOST = _IN_Q_OVERFLOW | _IN_IGNORED | _IN_UNMOUNT | _IN_DELETE_SELF | _IN_MOVE_SELF
_HEADER = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len; then the name
# Holds many events per read; the kernel needs room for at least one with the longest name.
_READ_SIZE = 64 * 1024


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


_LIBC = _libc()


def filesystem_magic(fd: int) -> int | None:
    """The ``f_type`` of the filesystem holding the open file ``fd``, or ``None`` when unknown."""
    fstatfs = getattr(_LIBC, "fstatfs", None)
    if fstatfs is None:
        return None
    # struct statfs starts with f_type (a C long on the architectures we can read it from);
    # the buffer is larger than the whole struct on every architecture.
    buffer = ctypes.create_string_buffer(512)
    if fstatfs(fd, buffer) != 0:
        return None
    return ctypes.c_long.from_buffer(buffer).value & 0xFFFFFFFF


def sees_every_writer(magic: int | None) -> bool:
    """Whether a watch on a filesystem of this ``statfs`` magic sees every change to it."""
    return magic in LOCAL_FILESYSTEMS


class DirectoryWatch:
    """An inotify watch on one open directory, owned by the process that made it.

    Not thread-safe: its owner serialises `drain` and `close`.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._pid = os.getpid()
        self._closer = weakref.finalize(self, os.close, fd)

    @classmethod
    def open(cls, dir_fd: int) -> DirectoryWatch:
        """Watch the directory open as ``dir_fd``.

        The watch is added through ``/proc/self/fd``, so it is on exactly the directory the
        caller opened, even if its path was replaced meanwhile. Raises `OSError` where inotify
        is unavailable: ``ENOSYS`` off Linux, ``EMFILE``/``ENOSPC`` at the per-user limits
        (``fs.inotify.max_user_instances``, ``max_user_watches``).
        """
        init = getattr(_LIBC, "inotify_init1", None)
        add = getattr(_LIBC, "inotify_add_watch", None)
        if init is None or add is None:
            raise OSError(errno.ENOSYS, "inotify is Linux only")
        fd = init(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))
        path = f"/proc/self/fd/{dir_fd}".encode()
        if add(fd, path, ctypes.c_uint32(_WATCHED | _IN_ONLYDIR)) < 0:
            code = ctypes.get_errno()
            os.close(fd)
            raise OSError(code, os.strerror(code))
        return cls(fd)

    def drain(self) -> set[str] | None:
        """The names changed since the last drain, or ``None`` when only a full scan can tell.

        ``None`` after an overflow, when the directory itself was deleted, moved, unmounted or
        changed (an event without a name), in a forked child (the queue belongs to the parent),
        and on any read error; the watch is then useless and the caller makes a new one.
        """
        if os.getpid() != self._pid or not self._closer.alive:
            return None
        names: set[str] = set()
        while True:
            try:
                data = os.read(self._fd, _READ_SIZE)
            except BlockingIOError:
                return names
            except OSError as exc:
                log.info("inotify read failed (%s): the next listing scans the directory", exc)
                return None
            offset = 0
            while offset < len(data):
                _, mask, _, length = _HEADER.unpack_from(data, offset)
                offset += _HEADER.size
                if mask & _LOST or not length:
                    return None
                names.add(os.fsdecode(data[offset : offset + length].rstrip(b"\0")))
                offset += length

    def close(self) -> None:
        """Stop watching (in a forked child this closes only the child's copy)."""
        self._closer()
