"""Local disk and POSIX mounts (CephFS via ceph-fuse): durable, atomic, lock-protected writes.

fsspec's local filesystem writes in place and never fsyncs, so this backend uses the OS directly:
a uniquely named temp file in the same directory, written and fsynced, then ``os.replace``d over
the target and the directory fsynced. A reader or a crash sees the old bytes or the new, never a
mix.

Compare-and-swap holds across threads and processes (two server replicas on one CephFS mount): the
check and the swap run under an exclusive ``flock`` on a per-name lock file in ``.locks/``. flock
locks belong to an open file description, so threads of one process exclude each other too.

Hidden objects (version history) are files in dot-directories under the root (``.history/<mac>/``),
written the same durable way; the listing skips every dot-name, so they are never configs.

On a local filesystem `PosixBackend.watched_scan` gives the listing an inotify watch of the
root, so a warm listing stats only the files reported changed instead of every file (see
`iot_config_core.directory_watch` for what the kernel reports, and docs/capacity.md).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import secrets
import stat as stat_module
import threading
import time
from collections.abc import Callable, Hashable, Iterator, Sequence
from concurrent import futures
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Final

from .backend import ANY, Absent, AnyVersion, Backend, Blob, Entry, VersionConflict, WatchedScan
from .directory_watch import DirectoryWatch, filesystem_magic, sees_every_writer

__all__ = ["PosixBackend", "sync_directory", "write_file_atomically"]

log = logging.getLogger(__name__)

LOCK_DIR = ".locks"
TEMP_SUFFIX = ".tmp"
# A writer holds its temp file for milliseconds; one this old was left by a crash.
STALE_TEMP_SECONDS = 15 * 60
#: A watched listing still scans the whole directory this often: the scan reaps temp files left by
#: crashed writers, and it bounds how long a change no watch can see stays unlisted.
FULL_SCAN_SECONDS = STALE_TEMP_SECONDS
# Lock waits are bounded so a wedged peer turns into a clear error instead of a hung request.
LOCK_TIMEOUT_SECONDS = 10.0


_U64 = (1 << 64) - 1


def _token(st: os.stat_result) -> int:
    """A version: an atomic replace gives a new inode, an in-place edit a new size or mtime.

    The three 64-bit fields packed into one exact int (inode, size, then mtime_ns as two's
    complement, so a pre-1970 mtime stays distinct): a third of the memory of a 3-tuple of ints
    in the listing cache, which holds one per config.
    """
    return (st.st_ino << 128) | (st.st_size << 64) | (st.st_mtime_ns & _U64)


def _entry(st: os.stat_result) -> Entry:
    return Entry(_token(st), datetime.fromtimestamp(st.st_mtime, UTC))


_CREATE_NEW: Final = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC


def sync_directory(path: str) -> None:
    """Fsync a directory, so the renames in it survive a crash (where the filesystem allows)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    except OSError as exc:  # some filesystems refuse fsync on directories; the rename stands
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def write_file_atomically(
    directory: str,
    name: str,
    data: bytes,
    *,
    sync: bool = True,
    before_replace: Callable[[], object] | None = None,
) -> os.stat_result:
    """Replace ``directory/name`` with ``data``; a reader or a crash sees old or new, never a mix.

    A uniquely named temp file beside the target, written and fsynced, renamed over it, and (with
    ``sync``) the directory fsynced; the temp file is removed on any failure. Callers writing
    many files may pass ``sync=False`` and call `sync_directory` once at the end. Returns the
    new file's stat. ``before_replace`` runs between the temp file's fsync and the rename (an
    exception from it leaves the target as it was).
    """
    temp = os.path.join(directory, f".{name}.{secrets.token_hex(6)}{TEMP_SUFFIX}")
    fd = os.open(temp, _CREATE_NEW, 0o666)
    try:
        try:
            _write_all(fd, data)
            os.fsync(fd)
            st = os.fstat(fd)
        finally:
            os.close(fd)
        if before_replace is not None:
            before_replace()
        os.replace(temp, os.path.join(directory, name))
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    if sync:
        sync_directory(directory)
    return st


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class _FsyncPool:
    """A few threads that fsync files, so a write's fsyncs wait side by side instead of in turn.

    A recorded write has two files to make durable (the history record and the config's temp
    file); the disk's flush latency, not the CPU, is their cost, and two flushes in flight at
    once take little longer than one. Forked children get a pool of their own: a pool's threads
    do not survive a fork.
    """

    THREADS = 4

    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def submit(self, fd: int) -> Future[None]:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.THREADS, thread_name_prefix="iot-config-fsync")
            return self._pool.submit(os.fsync, fd)

    def after_fork(self) -> None:
        self._pool = None  # the parent's threads are not here; its pool object is dropped
        self._lock = threading.Lock()


_FSYNC_POOL = _FsyncPool()
os.register_at_fork(after_in_child=_FSYNC_POOL.after_fork)


def _open_directory(path: str) -> int:
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def _config_names(dir_fd: int, root: str) -> list[str]:
    """The names in the open ``root`` that may be configs (no dot-names); reaps stale temps."""
    now = time.time()
    names: list[str] = []
    append = names.append
    for name in os.listdir(dir_fd):
        if name[0] != ".":
            append(name)
        elif name.endswith(TEMP_SUFFIX):
            _reap_temp(dir_fd, root, name, now)
    return names


def _scan_directory(dir_fd: int, root: str) -> list[tuple[str, Hashable]]:
    """`PosixBackend.scan` of the open ``root``."""
    # The stat per file is the floor (an in-place edit changes nothing but the file's own
    # inode), so everything else per file is kept to building the token: names from
    # listdir (no DirEntry objects) and stats relative to the open directory (no path walk),
    # measurably cheaper than scandir + DirEntry.stat() on a large fleet.
    found: list[tuple[str, Hashable]] = []
    append = found.append
    is_regular = stat_module.S_ISREG
    stat = os.stat
    for name in _config_names(dir_fd, root):
        try:
            st = stat(name, dir_fd=dir_fd)
        except OSError:  # deleted since readdir, or a broken symlink: not a config
            continue
        if is_regular(st.st_mode):
            append((name, _token(st)))
    return found


def _reap_temp(dir_fd: int, root: str, name: str, now: float) -> None:
    """Remove a temp file left by a crashed writer, once it is clearly abandoned."""
    try:
        if now - os.lstat(name, dir_fd=dir_fd).st_mtime > STALE_TEMP_SECONDS:
            os.unlink(name, dir_fd=dir_fd)
            log.info("removed stale temp file %s", os.path.join(root, name))
    except OSError:  # another reaper won, or no permission: harmless either way
        pass


class PosixBackend(Backend):
    """Configs as files in one directory of a POSIX filesystem."""

    def __init__(self, root: str, *, lock_timeout: float = LOCK_TIMEOUT_SECONDS) -> None:
        self.root = os.path.abspath(root)
        self._dir = os.path.join(self.root, "")  # with its trailing separator, for _path
        self._lock_timeout = lock_timeout

    @property
    def description(self) -> str:
        return f"file://{self.root}"

    def _path(self, name: str) -> str:
        # Concatenation, not os.path.join (a noticeable share of a cached device read): names
        # are plain file names, never paths.
        return self._dir + name

    def scan(self) -> list[tuple[str, Hashable]]:
        fd = _open_directory(self.root)
        try:
            return _scan_directory(fd, self.root)
        finally:
            os.close(fd)

    def watched_scan(self) -> WatchedScan:
        return _WatchedDirectory(self.root)

    def scan_hidden(self, prefix: str) -> list[str]:
        return [
            name
            for name in os.listdir(self.root)
            if name.startswith(prefix)
            and not name.endswith(TEMP_SUFFIX)
            and os.path.isfile(self._path(name))
        ]

    def stat(self, name: str) -> Entry | None:
        try:
            st = os.stat(self._path(name))
        except FileNotFoundError:
            return None
        return _entry(st) if stat_module.S_ISREG(st.st_mode) else None

    def version(self, name: str) -> Hashable | None:
        try:
            st = os.stat(self._path(name))
        except FileNotFoundError:
            return None
        if not stat_module.S_ISREG(st.st_mode):
            return None
        return _token(st)

    def read(self, name: str, limit: int) -> Blob | None:
        try:
            fd = os.open(self._path(name), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            st = os.fstat(fd)
            if not stat_module.S_ISREG(st.st_mode):
                return None
            chunks: list[bytes] = []
            remaining = limit + 1
            while remaining > 0:
                chunk = os.read(fd, min(remaining, max(st.st_size, 65536)))
                if not chunk:
                    break
                chunks.append(chunk)
                remaining -= len(chunk)
            return Blob(b"".join(chunks), _entry(st), st.st_size)
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def _locked(self, name: str) -> Iterator[None]:
        lock_dir = self._path(LOCK_DIR)
        path = os.path.join(lock_dir, name + ".lock")
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except FileNotFoundError:
            if not os.path.isdir(self.root):
                raise
            with contextlib.suppress(FileExistsError):
                os.mkdir(lock_dir)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        try:
            self._acquire(fd, name)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the flock

    def _acquire(self, fd: int, name: str) -> None:
        deadline = time.monotonic() + self._lock_timeout
        delay = 0.0005
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise TimeoutError(
                        errno.ETIMEDOUT, f"lock on {name} not acquired in {self._lock_timeout} s"
                    ) from None
                time.sleep(delay)
                delay = min(delay * 2, 0.02)
            else:
                return

    def replace(self, name: str, data: bytes, expected: Hashable | Absent | AnyVersion) -> Entry:
        # Unconditional writes take the lock too: a compare-and-swap must not interleave with them.
        with self._locked(name):
            if expected is not ANY and self.current_version(name) != expected:
                raise VersionConflict(name)
            return _entry(write_file_atomically(self.root, name, data))

    def remove(self, name: str, expected: Hashable) -> None:
        with self._locked(name):
            if self.current_version(name) != expected:
                raise VersionConflict(name)
            os.unlink(self._path(name))
            sync_directory(self.root)

    def root_exists(self) -> bool:
        return os.path.isdir(self.root)

    def create_root(self) -> None:
        os.makedirs(self.root, exist_ok=True)

    def probe(self) -> None:
        with os.scandir(self.root) as it:
            next(it, None)
        path = self._path(f".health-{secrets.token_hex(6)}{TEMP_SUFFIX}")
        fd = os.open(path, _CREATE_NEW, 0o600)
        try:
            os.write(fd, b"ok\n")
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(path)

    # -- hidden objects -------------------------------------------------------------------------

    def _hidden_dir(self, directory: str) -> str:
        assert directory.startswith("."), directory
        return os.path.join(self.root, *directory.split("/"))

    def _make_dirs(self, path: str) -> None:
        """Create ``path`` and missing parents under the root, each new entry synced."""
        if os.path.isdir(path):
            return
        parent = os.path.dirname(path)
        if parent != self.root:
            self._make_dirs(parent)
        elif not os.path.isdir(self.root):
            raise FileNotFoundError(errno.ENOENT, "store root is missing", self.root)
        with contextlib.suppress(FileExistsError):
            os.mkdir(path)
            sync_directory(parent)

    def put_hidden(self, path: str, data: bytes) -> None:
        # Written in place under its fresh name and fsynced, with no rename and no directory
        # fsync: a record counts only once the config swap after it happened, and that swap's
        # own fsyncs commit the (earlier) directory entry of the record on a journaling
        # filesystem (ext4, XFS, CephFS's MDS journal). A record torn by a crash mid-write was
        # never followed by its swap, so it is off the history's chain and never read.
        with self._hidden_written([(path, data)]) as synced:
            synced()

    def record_and_replace(
        self,
        records: Sequence[tuple[str, bytes]],
        name: str,
        data: bytes,
        expected: Hashable | Absent | AnyVersion,
    ) -> Entry:
        """The records durable before the swap, as in `Backend`, with their fsyncs overlapped.

        They run on a pool thread while the config's temp file is written and fsynced; the
        rename waits for both, so the order a crash can see is unchanged.
        """
        if not records:
            return self.replace(name, data, expected)
        with self._hidden_written(records) as synced, self._locked(name):
            if expected is not ANY and self.current_version(name) != expected:
                raise VersionConflict(name)
            return _entry(write_file_atomically(self.root, name, data, before_replace=synced))

    @contextlib.contextmanager
    def _hidden_written(self, records: Sequence[tuple[str, bytes]]) -> Iterator[Callable[[], None]]:
        """Write ``records`` now and fsync them on `_FsyncPool`; yields a wait for those fsyncs.

        The writes are done before the body runs, so a process killed after its swap leaves
        them (the page cache outlives it). The exit waits for every fsync whatever happens; when
        one failed, every record of the batch is removed again, as a failed write of one is.
        """
        written: list[tuple[str, int, Future[None]]] = []
        try:
            for path, data in records:
                directory, _, file_name = path.rpartition("/")
                where = self._hidden_dir(directory)
                target = os.path.join(where, file_name)
                try:
                    fd = os.open(target, _CREATE_NEW, 0o666)
                except FileNotFoundError:  # the device's first record: make its directory
                    self._make_dirs(where)
                    fd = os.open(target, _CREATE_NEW, 0o666)
                try:
                    _write_all(fd, data)
                    written.append((target, fd, _FSYNC_POOL.submit(fd)))
                except BaseException:
                    os.close(fd)
                    with contextlib.suppress(OSError):
                        os.unlink(target)
                    raise

            def synced() -> None:
                for _, _, done in written:
                    done.result()

            yield synced
        finally:
            futures.wait([done for _, _, done in written])
            failed = any(done.exception() is not None for _, _, done in written)
            for target, fd, _ in written:
                os.close(fd)
                if failed:
                    with contextlib.suppress(OSError):
                        os.unlink(target)

    def list_hidden(self, directory: str) -> list[str]:
        try:
            names = os.listdir(self._hidden_dir(directory))
        except FileNotFoundError:
            return []
        return [name for name in names if name[0] != "."]

    def read_hidden(self, path: str) -> bytes | None:
        try:
            with open(self._hidden_dir(path), "rb") as file:
                return file.read()
        except FileNotFoundError:
            return None

    def remove_hidden(self, paths: Sequence[str]) -> None:
        for path in paths:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._hidden_dir(path))


class _WatchedDirectory(WatchedScan):
    """Scans of the root that, between full scans, stat only the names inotify reports.

    Watched only where the kernel sees every writer (`sees_every_writer`); elsewhere, or without
    inotify, `changes` always answers ``None`` and every listing is a full scan, as without a
    watch. Names the watch cannot vouch for are stat'ed on every call besides the reported
    ones: symlinks (their target may change anywhere), files with other hard links (writes
    through another name are reported in that name's directory) and files on another device
    (mounted over their name). A hard link made elsewhere after a full scan raises no event
    here: the full scan every `FULL_SCAN_SECONDS` finds it. The watch is added before each full
    scan lists the directory, so no change falls between the two.
    """

    def __init__(self, root: str) -> None:
        self._root = root
        self._lock = threading.Lock()  # one scan or drain at a time: they share the queue
        self._watch: DirectoryWatch | None = None
        self._root_id = (-1, -1)  # (st_dev, st_ino) of the watched directory
        self._unwatched: set[str] = set()
        self._scanned_at = 0.0
        self._device = -1
        self._magic: int | None = None  # statfs type of the filesystem on ``_device``
        self._unwatched_why: str | None = ""  # why the last full scan was not watched, for the log

    def scan(self) -> list[tuple[str, Hashable]]:
        with self._lock:
            self._forget()
            fd = _open_directory(self._root)
            try:
                st = os.fstat(fd)
                if st.st_dev != self._device:  # statfs once per filesystem: a remote call on some
                    self._device, self._magic = st.st_dev, filesystem_magic(fd)
                watch, why = _watch_if_safe(fd, self._magic)
                self._log_decision(why)
                if watch is None:
                    return _scan_directory(fd, self._root)
                try:
                    self._root_id = (st.st_dev, st.st_ino)
                    self._unwatched = set()
                    found: list[tuple[str, Hashable]] = []
                    for name in _config_names(fd, self._root):
                        token = self._check(name, fd)
                        if token is not None:
                            found.append((name, token))
                except BaseException:
                    watch.close()
                    raise
            finally:
                os.close(fd)
            self._watch = watch
            self._scanned_at = time.monotonic()
            return found

    def changes(self) -> dict[str, Hashable | None] | None:
        with self._lock:
            watch = self._watch
            if watch is None or time.monotonic() - self._scanned_at > FULL_SCAN_SECONDS:
                return None
            names = watch.drain()
            try:
                st = os.stat(self._root)
            except OSError:
                names = None
            if names is None or (st.st_dev, st.st_ino) != self._root_id:
                self._forget()  # the root was replaced (or a parent of it moved) or events lost
                return None
            names = {name for name in names if name[0] != "."}
            names.update(self._unwatched)
            if not names:
                return {}
            try:
                fd = _open_directory(self._root)
                try:
                    return {name: self._check(name, fd) for name in names}
                finally:
                    os.close(fd)
            except BaseException:
                self._forget()  # the drained names are lost with this answer: rescan next time
                raise

    def _log_decision(self, why: str | None) -> None:
        if why != self._unwatched_why:
            self._unwatched_why = why
            if why is None:
                log.info("listing %s: inotify watch, a stat per changed file only", self._root)
            else:
                log.info("listing %s: a stat per file (%s)", self._root, why)

    def _forget(self) -> None:
        if self._watch is not None:
            self._watch.close()
            self._watch = None

    def _check(self, name: str, dir_fd: int) -> Hashable | None:
        """The token of ``name`` as `PosixBackend.version` gives it; notes what the watch misses."""
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except OSError:  # gone since readdir or the event
            self._unwatched.discard(name)
            return None
        if stat_module.S_ISLNK(st.st_mode):
            self._unwatched.add(name)
            try:
                st = os.stat(name, dir_fd=dir_fd)
            except OSError:  # a broken symlink: not a config, until its target appears
                return None
        elif stat_module.S_ISREG(st.st_mode) and (
            st.st_nlink != 1 or st.st_dev != self._root_id[0]
        ):
            self._unwatched.add(name)
        else:
            self._unwatched.discard(name)
        return _token(st) if stat_module.S_ISREG(st.st_mode) else None


def _watch_if_safe(dir_fd: int, magic: int | None) -> tuple[DirectoryWatch | None, str | None]:
    """A watch on the open directory (of filesystem type ``magic``) where it sees every writer.

    Else ``None`` and why not.
    """
    if not sees_every_writer(magic):
        kind = "unknown" if magic is None else f"0x{magic:x}"
        return None, f"filesystem type {kind} is not watched: other clients' changes bypass it"
    try:
        return DirectoryWatch.open(dir_fd), None
    except OSError as exc:
        return None, f"no inotify watch: {exc.strerror}"
