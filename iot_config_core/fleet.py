"""One patch across many devices: `patch_fleet`, the loop fleet scripts would otherwise write.

Each selected device is patched conditionally on the version its selection was decided on: when
another write lands in between, the device is re-read, the selection decided again on what is now
stored (a device renamed meanwhile is left alone), and the patch applied to that version, a
bounded number of times. So a fleet change never overwrites a concurrent edit and never touches a
device that stopped matching.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from enum import StrEnum

import attrs

from .errors import ConfigError, NotFoundError, PreconditionFailedError, StoreUnavailableError
from .model import ConfigSummary
from .patching import Patch
from .store import MAX_WRITE_ATTEMPTS, ConfigStore

__all__ = ["FleetOutcome", "FleetPatchResult", "Selector", "patch_device", "patch_fleet"]

#: Decides from a device's summary whether the patch is for it.
Selector = Callable[[ConfigSummary], bool]


class FleetOutcome(StrEnum):
    """What happened to one selected device."""

    CHANGED = "changed"
    UNCHANGED = "unchanged"
    WOULD_CHANGE = "would change"
    NO_LONGER_MATCHES = "no longer matches"
    GONE = "gone"
    FAILED = "failed"


@attrs.frozen
class FleetPatchResult:
    """The outcome for one device, with the error when it failed."""

    summary: ConfigSummary
    outcome: FleetOutcome
    #: The ETag now stored (``None`` when the device is gone or the patch failed).
    etag: str | None = None
    error: ConfigError | None = None
    #: Re-reads after other writes landed first.
    retries: int = 0


def _everything(_: ConfigSummary) -> bool:
    return True


def patch_fleet(
    store: ConfigStore,
    patch: Patch,
    where: Selector = _everything,
    *,
    dry_run: bool = False,
    max_attempts: int = MAX_WRITE_ATTEMPTS,
) -> Iterator[FleetPatchResult]:
    """Patch every listed device ``where`` selects, in MAC order, yielding each outcome.

    A device whose patch is refused (schema, a failed JSON Patch ``test``, a corrupt file) is
    reported as failed and the run goes on; a store outage (`StoreUnavailableError`) ends it.
    """
    for summary in store.listing().summaries:
        if where(summary):
            yield patch_device(
                store, summary, patch, where, dry_run=dry_run, max_attempts=max_attempts
            )


def patch_device(
    store: ConfigStore,
    summary: ConfigSummary,
    patch: Patch,
    where: Selector = _everything,
    *,
    dry_run: bool = False,
    max_attempts: int = MAX_WRITE_ATTEMPTS,
) -> FleetPatchResult:
    """Patch one device selected from ``summary``, only while ``where`` still selects it."""
    etag: str | None = summary.etag
    for attempt in range(max_attempts):
        try:
            if etag is None:  # another write landed first: decide again on what is stored now
                config = store.get(summary.mac_address)
                if not where(config.summary):
                    return FleetPatchResult(
                        summary, FleetOutcome.NO_LONGER_MATCHES, config.etag, retries=attempt
                    )
                etag = config.etag
            result = store.patch(summary.mac_address, patch, if_match=etag, dry_run=dry_run)
        except PreconditionFailedError:
            etag = None
            continue
        except NotFoundError:
            return FleetPatchResult(summary, FleetOutcome.GONE, retries=attempt)
        except StoreUnavailableError:
            raise
        except ConfigError as exc:
            return FleetPatchResult(summary, FleetOutcome.FAILED, error=exc, retries=attempt)
        if not result.changed:
            outcome = FleetOutcome.UNCHANGED
        else:
            outcome = FleetOutcome.WOULD_CHANGE if dry_run else FleetOutcome.CHANGED
        stored = None if outcome is FleetOutcome.WOULD_CHANGE else result.config.etag
        return FleetPatchResult(summary, outcome, stored, retries=attempt)
    error = PreconditionFailedError(
        f"{summary.mac_address} changed {max_attempts} times while it was being patched",
        mac_address=str(summary.mac_address),
    )
    return FleetPatchResult(summary, FleetOutcome.FAILED, error=error, retries=max_attempts)
