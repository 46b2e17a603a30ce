"""Partial updates of a config: JSON merge patch (RFC 7396) and JSON Patch (RFC 6902).

A patch is a value (`MergePatch` or `JsonPatch`) that `ConfigStore.patch` applies to the stored
content under compare-and-swap. Merge patch is the common case (set or remove keys); JSON Patch
covers what merge patch cannot say: array items, explicit ``test`` operations, moves.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import attrs
import jsonpatch
import jsonpointer

from .document import DocumentLimits, decode_document
from .errors import InvalidDocumentError, InvalidPatchError, PatchConflictError
from .model import StoredConfig

__all__ = [
    "JSON_PATCH",
    "MERGE_PATCH",
    "JsonPatch",
    "MergePatch",
    "Patch",
    "PatchResult",
    "decode_patch",
    "merge_patch",
    "patch_from_json",
]

#: Media types of the two patch formats (the HTTP layer's Content-Type values).
MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396 section 2: ``patch`` applied to ``target``, as a new value (inputs untouched).

    An object patch merges key by key (``null`` removes a key); any other patch replaces the
    target whole.
    """
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


@attrs.frozen
class MergePatch:
    """An RFC 7396 merge patch: an object whose keys set (or, with ``null``, remove) values."""

    document: Mapping[str, Any]
    media_type: ClassVar[str] = MERGE_PATCH

    def apply(self, content: Mapping[str, Any]) -> Any:
        """The patched content (the stored content is not modified)."""
        return merge_patch(dict(content), self.document)


@attrs.frozen
class JsonPatch:
    """An RFC 6902 JSON Patch: a list of operations applied in order, all or nothing."""

    operations: Sequence[Any]
    media_type: ClassVar[str] = JSON_PATCH

    def apply(self, content: Mapping[str, Any]) -> Any:
        """The patched content; `InvalidPatchError` or `PatchConflictError` when it cannot apply.

        Operations are applied one at a time (the same result: RFC 6902 applies them in order,
        and nothing is stored unless all apply) so an error can name the operation that failed.
        """
        document: Any = dict(content)
        for index, operation in enumerate(self.operations):
            where = _describe(index, operation)
            try:
                document = jsonpatch.apply_patch(document, [operation], in_place=False)
            except jsonpatch.JsonPatchTestFailed:
                raise PatchConflictError(
                    f"{where} failed: the stored value differs",
                    reason="test_failed",
                    operation=index,
                ) from None
            except jsonpatch.JsonPatchConflict as exc:
                raise PatchConflictError(
                    f"{where} does not fit the stored config: {exc}",
                    reason="conflict",
                    operation=index,
                ) from None
            except (jsonpatch.InvalidJsonPatch, jsonpointer.JsonPointerException) as exc:
                raise InvalidPatchError(
                    f"{where} is not a valid JSON Patch operation: {exc}",
                    reason="invalid_operation",
                    operation=index,
                ) from None
            except (TypeError, KeyError, AttributeError, ValueError) as exc:  # malformed input
                raise InvalidPatchError(
                    f"{where} is not a valid JSON Patch operation: {exc}",
                    reason="invalid_operation",
                    operation=index,
                ) from None
        return document


def _describe(index: int, operation: Any) -> str:
    """``operation 2 (test /pollSeconds)``: which operation an error is about."""
    if isinstance(operation, dict):
        op, path = operation.get("op"), operation.get("path")
        if isinstance(op, str) and isinstance(path, str):
            return f"operation {index} ({op[:20]} {path[:200]})"
    return f"operation {index}"


#: Either kind of patch.
Patch = MergePatch | JsonPatch


@attrs.frozen
class PatchResult:
    """What `ConfigStore.patch` did: the config now stored (or that would be, on a dry run)."""

    config: StoredConfig
    #: Whether the patch changed the content (an unchanged config is not written at all).
    changed: bool
    #: True when nothing was written because the caller asked for a dry run.
    dry_run: bool = False


def patch_from_json(value: Any, media_type: str | None = None) -> Patch:
    """The patch a decoded JSON value is: given by ``media_type``, else by its shape.

    Without a media type an array is a JSON Patch and an object a merge patch (a merge patch that
    is not an object would replace the whole config, which a config patch never means).
    """
    if media_type is None:
        media_type = JSON_PATCH if isinstance(value, list) else MERGE_PATCH
    if media_type == JSON_PATCH:
        if not isinstance(value, list):
            raise InvalidPatchError(
                "a JSON Patch must be an array of operations", reason="not_an_array"
            )
        return JsonPatch(tuple(value))
    if media_type == MERGE_PATCH:
        if not isinstance(value, dict):
            raise InvalidPatchError(
                "a merge patch of a config must be a JSON object", reason="not_an_object"
            )
        return MergePatch(value)
    raise InvalidPatchError(f"unknown patch media type {media_type!r}", reason="media_type")


# A patch document may be an array, which the config decoder refuses: it is wrapped in an object
# so the same strict rules (duplicate keys, NaN, depth) apply. The wrapper's line break keeps the
# body's columns; its lines and pointers are shifted back in errors.
_WRAPPER = (b'{"patch":\n', b"\n}")
_LINE = re.compile(r"\bline (\d+)")


def decode_patch(
    data: bytes, limits: DocumentLimits = DocumentLimits(), media_type: str | None = None
) -> Patch:
    """Decode a patch document with the config decoder's strict rules (see `patch_from_json`).

    `InvalidDocumentError` (positions and pointers in ``data`` itself) when it is not strict JSON,
    `InvalidPatchError` when it is JSON but not a patch.
    """
    wrapped = DocumentLimits(
        max_bytes=limits.max_bytes + len(b"".join(_WRAPPER)), max_depth=limits.max_depth + 1
    )
    try:
        body = decode_document(_WRAPPER[0] + data + _WRAPPER[1], wrapped)
    except InvalidDocumentError as exc:
        details = dict(exc.details)
        line = details.get("line")
        if isinstance(line, int):
            details["line"] = line - 1
        pointer = details.get("pointer")
        if isinstance(pointer, str):
            details["pointer"] = pointer.removeprefix("/patch")
        if details.get("reason") == "empty" or not data.strip():
            details["reason"] = "empty"
            raise type(exc)("the patch is empty", **details) from None
        message = _LINE.sub(lambda m: f"line {int(m[1]) - 1}", exc.message)
        raise type(exc)(message, **details) from None
    return patch_from_json(body["patch"], media_type)
