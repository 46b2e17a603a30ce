"""JSON Schemas of device configs, kept in the store itself, and the rule that picks one.

Schemas live beside the configs (``.schema.<name>.json`` in the same root or prefix; names that
start with a dot are never listed as configs), so every replica, the CLI and scripts see the same
ones. The rule, written once here:

- a config whose content has a string ``deviceModel`` is checked against the schema of that
  name, if one is stored;
- otherwise against the schema named ``default``, if one is stored;
- otherwise it is not checked.

Schemas are JSON Schema draft-07. Each write is checked with a compiled validator
(fastjsonschema, cached per schema version); only when it rejects does the reference validator
(jsonschema) list every problem with its JSON pointer. A *relaxed* schema reports its problems
without refusing the write, for migrating a fleet to a schema. Reads never check: a config stored
before its schema existed keeps being served.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Hashable, Iterator, Mapping
from contextlib import AbstractContextManager
from typing import Any

import attrs
import fastjsonschema
import jsonschema

from .backend import ABSENT, Backend, Blob, VersionConflict
from .document import (
    DocumentLimits,
    _pointer_token,
    compute_etag,
    decode_document,
    encode_document,
)
from .errors import (
    InvalidDocumentError,
    InvalidSchemaError,
    NotFoundError,
    PreconditionFailedError,
    SchemaViolationError,
    UnsupportedStoreError,
)
from .etags import ETagCondition
from .mac import MacAddress

__all__ = [
    "DEFAULT_SCHEMA",
    "DRAFT",
    "SCHEMA_KEY",
    "ConfigViolation",
    "Problem",
    "SchemaReport",
    "SchemaStore",
    "StoredSchema",
    "Validation",
    "schema_file_name",
]

log = logging.getLogger(__name__)

#: The content key whose (string) value names a config's schema.
SCHEMA_KEY = "deviceModel"
#: The schema for configs that name none, or name one that is not stored.
DEFAULT_SCHEMA = "default"
#: The JSON Schema draft schemas are written in (fastjsonschema's newest).
DRAFT = "http://json-schema.org/draft-07/schema#"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}")
_PREFIX = ".schema."
_SUFFIX = ".json"
_MAX_ATTEMPTS = 16
# Problems listed per violation: a wholly wrong config must not make a megabyte error body.
MAX_PROBLEMS = 50

Guard = Callable[[str], AbstractContextManager[None]]


def schema_file_name(name: str) -> str:
    """The stored name of schema ``name`` (`InvalidSchemaError` for a name that is not allowed)."""
    if not isinstance(name, str) or _NAME.fullmatch(name) is None:
        raise InvalidSchemaError(
            f"{str(name)[:80]!r} is not a schema name: letters, digits, '.', '_' and '-', "
            "starting with a letter or digit, at most 64 characters",
            reason="name",
            name=str(name)[:80],
        )
    return f"{_PREFIX}{name}{_SUFFIX}"


@attrs.frozen
class Problem:
    """One reason a config does not satisfy its schema."""

    #: RFC 6901 pointer into the content ("" is the whole config).
    pointer: str
    message: str


@attrs.frozen
class Validation:
    """The result of checking one content against the schema the rule picks for it."""

    #: The schema's name, or ``None`` when no schema applies.
    schema: str | None
    problems: tuple[Problem, ...] = ()
    #: The schema only warns (its problems do not refuse writes).
    relaxed: bool = False

    @property
    def valid(self) -> bool:
        """Whether there is nothing to report."""
        return not self.problems


@attrs.frozen
class ConfigViolation:
    """A stored config that the schema the rule picks for it rejects."""

    mac_address: MacAddress
    schema: str
    relaxed: bool
    problems: tuple[Problem, ...]


@attrs.frozen
class SchemaReport:
    """Which stored configs violate which schema (`ConfigStore.schema_report`)."""

    #: Valid configs checked (files that do not parse are reported by the listing instead).
    checked: int
    violations: tuple[ConfigViolation, ...]


@attrs.frozen
class StoredSchema:
    """A schema as stored: its JSON Schema, its mode and the version it was read at."""

    name: str
    schema: Mapping[str, Any]
    relaxed: bool
    etag: str


@attrs.frozen
class _Compiled:
    """The two validators of one schema version."""

    check: Callable[[Any], Any]
    reference: jsonschema.Draft7Validator
    relaxed: bool

    def problems(self, content: Mapping[str, Any]) -> tuple[Problem, ...]:
        try:
            self.check(content)
        except fastjsonschema.JsonSchemaValueException as exc:
            found = sorted(
                self.reference.iter_errors(content), key=lambda e: list(map(str, e.absolute_path))
            )
            if not found:  # the two disagree (a format only one knows): report the fast one's
                return (Problem(_pointer(exc.path[1:] if exc.path else []), exc.message),)
            return tuple(
                Problem(_pointer(error.absolute_path), error.message)
                for error in found[:MAX_PROBLEMS]
            )
        return ()


def _pointer(path: Any) -> str:
    return "".join(_pointer_token(part) for part in path)


def check_schema(schema: Any) -> None:
    """Refuse what is not a draft-07 JSON Schema this store can use (`InvalidSchemaError`)."""
    if not isinstance(schema, dict):
        raise InvalidSchemaError("a schema must be a JSON object", reason="not_an_object")
    declared = schema.get("$schema")
    if declared is not None and declared.rstrip("#") != DRAFT.rstrip("#"):
        raise InvalidSchemaError(
            f"only JSON Schema draft-07 is supported; $schema is {str(declared)[:100]!r} "
            f"(write {DRAFT!r} or leave $schema out)",
            reason="draft",
        )
    for pointer, keyword, uri in _references(schema, ""):
        if not uri.startswith("#"):
            raise InvalidSchemaError(
                f"{keyword} {uri[:100]!r} at {pointer or '/'} points outside the schema; only "
                "local references ('#/...') are allowed, so validation never fetches anything",
                reason="remote_ref",
                pointer=pointer,
            )
    try:
        jsonschema.Draft7Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise InvalidSchemaError(
            f"not a valid draft-07 schema at {_pointer(exc.absolute_path) or '/'}: {exc.message}",
            reason="meta_schema",
            pointer=_pointer(exc.absolute_path),
        ) from None


#: Keywords whose URI a validator may resolve, and so fetch, unless it stays inside the schema.
_URI_KEYWORDS = ("$ref", "$id")


def _references(value: Any, pointer: str) -> Iterator[tuple[str, str, str]]:
    """``(pointer, keyword, uri)`` of every `_URI_KEYWORDS` string in a schema."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key in _URI_KEYWORDS and isinstance(item, str):
                yield pointer, key, item
            else:
                yield from _references(item, pointer + _pointer_token(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _references(item, pointer + _pointer_token(index))


def _compile(schema: Mapping[str, Any], *, relaxed: bool) -> _Compiled:
    try:
        # use_default=False: validation must never fill defaults into the content it checks.
        check = fastjsonschema.compile(dict(schema), use_default=False)
    except fastjsonschema.JsonSchemaDefinitionException as exc:
        raise InvalidSchemaError(
            f"the schema cannot be compiled: {exc}", reason="compile"
        ) from None
    reference = jsonschema.Draft7Validator(
        schema, format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER
    )
    return _Compiled(check, reference, relaxed)


class SchemaStore:
    """The schemas of one store's root, and the validation of content against them.

    Compiled validators are cached by the schema file's version token, so a schema changed by
    another replica (or the CLI) is used from the next write on, at the cost of one stat.
    """

    def __init__(self, backend: Backend, limits: DocumentLimits, guard: Guard) -> None:
        self._backend = backend
        self._limits = limits
        self._guard = guard
        self._compiled: dict[str, tuple[Hashable, _Compiled]] = {}
        self._lock = threading.Lock()

    # -- managing schemas -----------------------------------------------------------------------

    def names(self) -> list[str]:
        """The names of every stored schema, sorted."""
        try:
            with self._guard("list schemas"):
                found = self._backend.scan_hidden(_PREFIX)
        except NotImplementedError as exc:
            raise UnsupportedStoreError(
                f"this store cannot list schemas: {exc}", action="list schemas"
            ) from None
        return sorted(
            n[len(_PREFIX) : -len(_SUFFIX)]
            for n in found
            if n.endswith(_SUFFIX) and _NAME.fullmatch(n[len(_PREFIX) : -len(_SUFFIX)])
        )

    def get(self, name: str) -> StoredSchema:
        """The stored schema ``name``; `NotFoundError` when there is none."""
        file_name = schema_file_name(name)
        with self._guard("get schema"):
            blob = self._backend.read(file_name, self._limits.max_bytes)
        if blob is None:
            raise NotFoundError(f"no schema {name!r}", schema=name)
        return _stored(name, blob.data, self._limits)

    def put(
        self,
        name: str,
        schema: Mapping[str, Any],
        *,
        relaxed: bool = False,
        if_match: str | ETagCondition | None = None,
    ) -> StoredSchema:
        """Store ``schema`` under ``name`` once it passes its meta-schema.

        ``if_match`` makes the write conditional on the stored version (``*``: any).
        """
        file_name = schema_file_name(name)
        check_schema(schema)
        _compile(schema, relaxed=relaxed)  # what compiles now compiles on every write
        data = encode_document({"relaxed": relaxed, "schema": schema}, self._limits)
        match = None if if_match is None else ETagCondition.parse(if_match)
        for _ in range(_MAX_ATTEMPTS):
            current = self._read_matching(name, file_name, match, "put schema")
            try:
                with self._guard("put schema"):
                    self._backend.replace(
                        file_name, data, ABSENT if current is None else current.entry.token
                    )
            except VersionConflict:
                continue
            return StoredSchema(name, schema, relaxed, compute_etag(data))
        raise PreconditionFailedError(f"schema {name!r} kept changing", schema=name)

    def delete(self, name: str, *, if_match: str | ETagCondition | None = None) -> None:
        """Delete schema ``name``: configs that named it fall back to the default schema."""
        file_name = schema_file_name(name)
        match = None if if_match is None else ETagCondition.parse(if_match)
        for _ in range(_MAX_ATTEMPTS):
            current = self._read_matching(name, file_name, match, "delete schema", required=True)
            assert current is not None
            try:
                with self._guard("delete schema"):
                    self._backend.remove(file_name, current.entry.token)
            except VersionConflict:
                continue
            return
        raise PreconditionFailedError(f"schema {name!r} kept changing", schema=name)

    def _read_matching(
        self,
        name: str,
        file_name: str,
        match: ETagCondition | None,
        action: str,
        *,
        required: bool = False,
    ) -> Blob | None:
        """The stored schema file (``None``: absent), once ``match`` holds for it.

        ``required``: absence is `NotFoundError`, whatever ``match`` says (as for configs).
        """
        with self._guard(action):
            current = self._backend.read(file_name, self._limits.max_bytes)
        if current is None and required:
            raise NotFoundError(f"no schema {name!r}", schema=name)
        current_etag = None if current is None else compute_etag(current.data)
        if match is not None and not match.matches_strong(current_etag):
            raise PreconditionFailedError(
                f"schema {name!r} is not at the expected version"
                if current_etag is not None
                else f"no schema {name!r} to match",
                schema=name,
                current_etag=current_etag,
            )
        return current

    # -- validation -----------------------------------------------------------------------------

    def validate(self, content: Mapping[str, Any]) -> Validation:
        """Check ``content`` against the schema the rule picks (see the module docstring)."""
        named = content.get(SCHEMA_KEY)
        candidates = [named] if isinstance(named, str) and _NAME.fullmatch(named) else []
        candidates.append(DEFAULT_SCHEMA)
        for name in candidates:
            compiled = self._compiled_for(name)
            if compiled is not None:
                return Validation(name, compiled.problems(content), compiled.relaxed)
        return Validation(None)

    def check(self, content: Mapping[str, Any]) -> Validation:
        """`validate`, raising `SchemaViolationError` when an enforcing schema is not satisfied.

        A relaxed schema's problems are logged and returned: the write goes ahead.
        """
        result = self.validate(content)
        if result.problems:
            first = result.problems[0]
            where = first.pointer or "the config"
            more = f" (and {len(result.problems) - 1} more)" if len(result.problems) > 1 else ""
            summary = f"{where}: {first.message}{more}"
            if not result.relaxed:
                raise SchemaViolationError(
                    summary,
                    reason="schema",
                    schema=result.schema,
                    problems=[attrs.asdict(p) for p in result.problems],
                )
            # Pointers only: messages quote the values, and configs hold secrets (Wi-Fi keys).
            log.warning(
                "config violates relaxed schema %r at %s",
                result.schema,
                ", ".join(p.pointer or "/" for p in result.problems),
            )
        return result

    def _compiled_for(self, name: str) -> _Compiled | None:
        """The cached validator of schema ``name`` at its current version (one stat when cached)."""
        file_name = schema_file_name(name)
        with self._guard("validate"):
            token = self._backend.version(file_name)
            if token is None:
                return None
            cached = self._compiled.get(name)
            if cached is not None and cached[0] == token:
                return cached[1]
            blob = self._backend.read(file_name, self._limits.max_bytes)
        if blob is None:
            return None
        stored = _stored(name, blob.data, self._limits)
        compiled = _compile(stored.schema, relaxed=stored.relaxed)
        with self._lock:
            self._compiled[name] = (blob.entry.token, compiled)
        return compiled


def _stored(name: str, data: bytes, limits: DocumentLimits) -> StoredSchema:
    """Decode a stored schema file; a damaged one is an error, never silently "no schema"."""
    try:
        document = decode_document(data, limits)
    except InvalidDocumentError as exc:
        raise InvalidSchemaError(
            f"stored schema {name!r} is damaged: {exc.message}", reason="stored", schema=name
        ) from None
    schema = document.get("schema")
    relaxed = document.get("relaxed", False)
    if not isinstance(schema, dict) or not isinstance(relaxed, bool):
        raise InvalidSchemaError(
            f'stored schema {name!r} is not {{"relaxed": bool, "schema": {{...}}}}',
            reason="stored",
            schema=name,
        )
    return StoredSchema(name, schema, relaxed, compute_etag(data))
