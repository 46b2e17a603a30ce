"""A change feed: which device configs changed, as seen by successive listings of a store.

Every writer is seen -- this process, another server replica, the CLI, a script using the library,
a hand edit on the file system -- because the feed compares listings instead of hooking writes.
It lists ETags only (`ConfigStore.etags`), not summaries: polling an unchanged fleet costs one
metadata scan (with an inotify watch on local disk, one read of the kernel's queue) and no
reads; a changed file is read and hashed once, and parsed only when its version is new to the
consumer; the diff looks at the changed devices only.

The feed is a diff against a *baseline*, the ETag of every device the consumer already knows
about. A fresh consumer starts from the fleet as it is now; one that kept state elsewhere (a
retained MQTT topic, a database) resumes with that state as its baseline, and the first poll
reports exactly what changed meanwhile: a resync, not silence.
"""

from __future__ import annotations

import threading
import time
from collections import ChainMap
from collections.abc import Iterable, Iterator, Mapping

import attrs

from .mac import MacAddress
from .store import ConfigStore, ETagListing

__all__ = ["Change", "ChangeFeed", "watch"]

#: Seconds between two listings of `watch`, unless told otherwise.
DEFAULT_INTERVAL = 5.0


@attrs.frozen
class Change:
    """The config of one device changed: ``etag`` is its new version, ``None`` once deleted."""

    mac_address: MacAddress
    etag: str | None

    @property
    def deleted(self) -> bool:
        """Whether the config is gone."""
        return self.etag is None


class ChangeFeed:
    """Successive listings of one store, turned into per-device changes.

    ``baseline`` is what the consumer already knows (MAC -> ETag). ``None`` means "nothing
    before now": the first `poll` records the fleet and reports no change. A mapping makes the
    first poll report every difference from it (``{}``: every config, a full resync).

    A stored file that does not parse keeps its last valid version here: it is reported neither
    as changed nor as deleted until it is repaired. Devices are served an error for it meanwhile,
    and a half-saved hand edit is no reason to tell a fleet anything. Telling that needs a parse
    of each changed file, which `vouch` spares for the versions the consumer read itself.

    Not thread-safe: one consumer polls it (and vouches). Memory is one entry per device.
    """

    def __init__(
        self, store: ConfigStore, baseline: Mapping[MacAddress, str] | None = None
    ) -> None:
        self._store = store
        self._known: dict[MacAddress, str] = {} if baseline is None else dict(baseline)
        self._silent = baseline is None
        self._generation: int | None = None
        self._vouched: dict[MacAddress, str] = {}

    @property
    def store(self) -> ConfigStore:
        """The store this feed lists."""
        return self._store

    @property
    def state(self) -> Mapping[MacAddress, str]:
        """The ETag of every device as of the last poll (a copy)."""
        return dict(self._known)

    def vouch(self, mac: MacAddress, etag: str) -> None:
        """Tell the feed that the consumer has read version ``etag`` of ``mac`` itself.

        When the next poll finds that version, the file is neither read again (where it was read
        with `ConfigStore.etag` on this feed's store) nor parsed: it is reported like any other
        change. For a publisher announcing its own writes, whose versions it reads at once to
        announce them: without this, the next poll would read each again and parse it, only to
        learn what the publisher already told devices. Vouching for a version that later turns
        out damaged only means the feed treats it as the consumer already did.
        """
        self._vouched[mac] = etag

    def poll(self) -> list[Change]:
        """List the store's ETags once; the changes since the previous poll, sorted by MAC.

        Raises what `ConfigStore.etags` raises (`StoreUnavailableError`); the baseline is then
        unchanged, so the next successful poll reports everything missed.
        """
        known = self._known
        vouched = ChainMap(self._vouched, known) if self._vouched else known
        listing = self._store.etags(vouched)
        self._vouched = {}
        if listing.generation == self._generation:
            return []
        if listing.since == self._generation:
            changes = self._apply(listing, listing.changed)
        else:  # the first poll, a resync, or another feed on this store listed in between
            changes = self._apply(listing, listing.etags.keys() | listing.damaged | known.keys())
        self._generation = listing.generation
        if self._silent:
            self._silent = False
            return []
        return changes

    def resync(self, baseline: Mapping[MacAddress, str]) -> list[Change]:
        """Replace the baseline by ``baseline`` and poll: every difference between the two.

        For a consumer whose own record may have drifted from what the feed last told it, e.g.
        after reconnecting to a broker that lost its retained messages.
        """
        self._known = dict(baseline)
        self._silent = False
        self._generation = None
        self._vouched = {}
        return self.poll()

    def _apply(self, listing: ETagListing, macs: Iterable[MacAddress]) -> list[Change]:
        """Bring the state of ``macs`` up to ``listing``; what changed, sorted by MAC."""
        known = self._known
        changes = []
        for mac in macs:
            etag = listing.etags.get(mac)
            if etag is None:
                if mac not in listing.damaged and known.pop(mac, None) is not None:
                    changes.append(Change(mac, None))
            elif known.get(mac) != etag:
                known[mac] = etag
                changes.append(Change(mac, etag))
        return sorted(changes, key=_by_mac)


def _by_mac(change: Change) -> int:
    return change.mac_address.value  # an int: comparing MacAddress objects costs a call each


def watch(
    store: ConfigStore,
    *,
    interval: float = DEFAULT_INTERVAL,
    baseline: Mapping[MacAddress, str] | None = None,
    stop: threading.Event | None = None,
) -> Iterator[Change]:
    """Yield every change to ``store``'s configs, listing it every ``interval`` seconds.

    Runs until ``stop`` is set (or for ever); see `ChangeFeed` for ``baseline`` (``{}`` first
    yields every config that exists). A failing store raises `StoreUnavailableError` out of the
    iterator: resume with ``baseline=`` the state you had to miss nothing.
    """
    if interval <= 0:
        raise ValueError(f"interval must be positive, not {interval}")
    stop = threading.Event() if stop is None else stop
    feed = ChangeFeed(store, baseline)
    while not stop.is_set():
        started = time.monotonic()
        yield from feed.poll()
        stop.wait(max(0.0, interval - (time.monotonic() - started)))
