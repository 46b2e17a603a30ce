"""Partial updates: RFC 7396 merge patch and RFC 6902 JSON Patch, in the library and over HTTP."""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import webtest
from hypothesis import given, settings
from hypothesis import strategies as st
from support import JSON_HEADERS, ServerProcess, put_body

from iot_config_core import (
    ConfigStore,
    InvalidPatchError,
    JsonPatch,
    MergePatch,
    NotFoundError,
    PatchConflictError,
    PreconditionFailedError,
    merge_patch,
    open_store,
    patch_from_json,
)
from iot_config_server import Settings, create_app

MAC = "aa-bb-cc-dd-ee-ff"
MERGE = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"


def rfc7396(target: Any, patch: Any) -> Any:
    """RFC 7396 section 2's pseudo-code, transcribed line by line (the oracle)."""
    if isinstance(patch, dict):
        if not isinstance(target, dict):
            target = {}  # Ignore the contents and set it to an empty Object
        for name, value in patch.items():
            if value is None:
                if name in target:
                    del target[name]
            else:
                target[name] = rfc7396(target.get(name), value)
        return target
    return patch


scalars = st.none() | st.booleans() | st.integers(-1000, 1000) | st.text(max_size=4)
keys = st.sampled_from(["a", "b", "c", "deviceName", "ü"])
values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(keys, children, max_size=3),
    max_leaves=10,
)
documents = st.dictionaries(keys, values.filter(lambda v: v is not None), max_size=5)
patches = st.dictionaries(keys, values, max_size=4)


@pytest.fixture
def store() -> ConfigStore:
    return open_store("memory://patch", create=True)


# RFC 7396 appendix A: target, patch, result.
RFC_EXAMPLES = [
    ({"a": "b"}, {"a": "c"}, {"a": "c"}),
    ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
    ({"a": "b"}, {"a": None}, {}),
    ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
    ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
    ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
    ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
    ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
    (["a", "b"], ["c", "d"], ["c", "d"]),
    ({"a": "b"}, ["c"], ["c"]),
    ({"a": "foo"}, None, None),
    ({"a": "foo"}, "bar", "bar"),
    ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
    ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
    ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
]


@pytest.mark.parametrize(("target", "patch", "result"), RFC_EXAMPLES)
def test_merge_patch_gives_the_rfc_examples(target: Any, patch: Any, result: Any) -> None:
    before = copy.deepcopy(target)
    assert merge_patch(target, patch) == result
    assert target == before  # the input is not modified


@settings(max_examples=200, deadline=None)
@given(document=documents, patch=patches)
def test_the_stored_result_is_the_rfc_algorithm_applied_to_the_previous_version(
    document: dict[str, Any], patch: dict[str, Any]
) -> None:
    store = open_store("memory://property", create=True)
    before = store.put(MAC, document)
    result = store.patch(MAC, MergePatch(patch))
    expected = rfc7396(copy.deepcopy(document), patch)
    stored = store.get(MAC)
    assert stored.content == expected
    assert json.dumps(stored.content) == json.dumps(expected)  # key order and types too
    assert result.config.etag == stored.etag
    assert result.changed == (json.dumps(expected) != json.dumps(document))
    if not result.changed:
        assert stored.etag == before.etag


def test_json_patch_edits_array_items_and_tests_first(store: ConfigStore) -> None:
    store.put(MAC, {"sensors": [{"pin": 4}, {"pin": 5}], "pollSeconds": 30})
    ops = [
        {"op": "test", "path": "/pollSeconds", "value": 30},
        {"op": "replace", "path": "/sensors/1/pin", "value": 6},
        {"op": "add", "path": "/sensors/-", "value": {"pin": 7}},
        {"op": "remove", "path": "/pollSeconds"},
    ]
    result = store.patch(MAC, JsonPatch(ops))
    assert result.changed
    assert store.get(MAC).content == {"sensors": [{"pin": 4}, {"pin": 6}, {"pin": 7}]}


def test_a_failed_test_operation_writes_nothing(store: ConfigStore) -> None:
    before = store.put(MAC, {"pollSeconds": 30})
    with pytest.raises(PatchConflictError) as caught:
        store.patch(
            MAC,
            JsonPatch(
                [
                    {"op": "replace", "path": "/pollSeconds", "value": 5},
                    {"op": "test", "path": "/pollSeconds", "value": 30},
                ]
            ),
        )
    assert caught.value.details["reason"] == "test_failed"
    assert store.get(MAC).etag == before.etag


@pytest.mark.parametrize(
    "ops",
    [
        [{"op": "frobnicate", "path": "/a"}],
        [{"path": "/a"}],
        [{"op": "add", "path": "a", "value": 1}],
        [{"op": "add", "path": "/a"}],
        [5],
        [{"op": "replace", "path": "", "value": [1]}],
    ],
)
def test_malformed_json_patches_are_refused(store: ConfigStore, ops: list[Any]) -> None:
    store.put(MAC, {"a": 1})
    with pytest.raises(InvalidPatchError):
        store.patch(MAC, JsonPatch(ops))
    assert store.get(MAC).content == {"a": 1}


def test_a_patch_of_a_missing_config_is_not_found(store: ConfigStore) -> None:
    with pytest.raises(NotFoundError):
        store.patch(MAC, MergePatch({"a": 1}))


def test_if_match_makes_the_patch_conditional(store: ConfigStore) -> None:
    first = store.put(MAC, {"a": 1})
    store.put(MAC, {"a": 2})
    with pytest.raises(PreconditionFailedError) as caught:
        store.patch(MAC, MergePatch({"b": 1}), if_match=first.etag)
    assert caught.value.current_etag == store.get(MAC).etag
    assert store.patch(MAC, MergePatch({"b": 1}), if_match=store.get(MAC).etag).changed


def test_a_dry_run_writes_nothing(store: ConfigStore) -> None:
    before = store.put(MAC, {"a": 1})
    result = store.patch(MAC, MergePatch({"b": 2}), dry_run=True)
    assert result.dry_run
    assert result.changed
    assert result.config.content == {"a": 1, "b": 2}
    assert store.get(MAC).etag == before.etag


def test_patch_from_json_tells_the_kind_by_shape_or_media_type() -> None:
    assert patch_from_json({"a": 1}) == MergePatch({"a": 1})
    assert patch_from_json([]) == JsonPatch(())
    with pytest.raises(InvalidPatchError):
        patch_from_json({"a": 1}, JSON_PATCH)
    with pytest.raises(InvalidPatchError):
        patch_from_json([1], MERGE)


# -- HTTP ---------------------------------------------------------------------------------------


@pytest.fixture
def app(store: ConfigStore) -> webtest.TestApp:
    return webtest.TestApp(create_app(store, Settings()))


def test_http_merge_patch(app: webtest.TestApp) -> None:
    app.put_json(f"/api/configs/{MAC}", {"content": {"a": 1, "c": {"d": 1}}})
    answer = app.patch(
        "/api/configs/AA:BB:CC:DD:EE:FF",
        json.dumps({"a": None, "c": {"e": 2}}),
        content_type=MERGE,
    )
    assert answer.json["content"] == {"c": {"d": 1, "e": 2}}
    assert answer.headers["ETag"] == app.get(f"/api/configs/{MAC}").headers["ETag"]


def test_http_json_patch_conflict_is_409(app: webtest.TestApp) -> None:
    app.put_json(f"/api/configs/{MAC}", {"content": {"a": 1}})
    answer = app.patch(
        f"/api/configs/{MAC}",
        json.dumps([{"op": "test", "path": "/a", "value": 2}]),
        content_type=JSON_PATCH,
        status=409,
    )
    assert answer.json["code"] == "PATCH_CONFLICT"


@pytest.mark.parametrize("content_type", ["application/json", "text/plain", ""])
def test_http_unsupported_patch_media_type_is_415_with_the_accepted_ones(
    app: webtest.TestApp, content_type: str
) -> None:
    app.put_json(f"/api/configs/{MAC}", {"content": {"a": 1}})
    answer = app.patch(f"/api/configs/{MAC}", b"{}", content_type=content_type, status=415)
    assert answer.json["details"]["accepted"] == [MERGE, JSON_PATCH]


def test_http_patch_body_errors_point_into_the_body(app: webtest.TestApp) -> None:
    app.put_json(f"/api/configs/{MAC}", {"content": {"a": 1}})
    answer = app.patch(f"/api/configs/{MAC}", b'{"a": 1,\n "a": 2}', content_type=MERGE, status=400)
    assert answer.json["details"]["line"] == 2
    assert answer.json["details"]["pointer"] == "/a"
    answer = app.patch(f"/api/configs/{MAC}", b'{"a": ', content_type=MERGE, status=400)
    assert answer.json["code"] == "INVALID_BODY"
    answer = app.patch(f"/api/configs/{MAC}", b"[1]", content_type=MERGE, status=400)
    assert answer.json["code"] == "INVALID_PATCH"


def test_http_dry_run_answers_what_would_be_stored(app: webtest.TestApp) -> None:
    stored = app.put_json(f"/api/configs/{MAC}", {"content": {"a": 1}})
    answer = app.patch(f"/api/configs/{MAC}?dry_run=true", json.dumps({"b": 2}), content_type=MERGE)
    assert answer.headers["X-Dry-Run"] == "true"
    assert "ETag" not in answer.headers
    assert answer.json["content"] == {"a": 1, "b": 2}
    answer = app.put_json(f"/api/configs/{MAC}?dry_run=1", {"content": {"z": 1}})
    assert answer.json["content"] == {"z": 1}
    assert app.get(f"/api/configs/{MAC}").headers["ETag"] == stored.headers["ETag"]
    app.put_json(f"/api/configs/{MAC}?dry_run=maybe", {"content": {}}, status=400)


def test_openapi_documents_patch_media_types(app: webtest.TestApp) -> None:
    document = app.get("/api/openapi.json").json
    operation = document["paths"]["/api/configs/{mac_address}"]["patch"]
    assert set(operation["requestBody"]["content"]) == {MERGE, JSON_PATCH}
    assert "415" in operation["responses"]
    assert any(p["name"] == "dry_run" for p in operation["parameters"])


# -- a real server --------------------------------------------------------------------------------


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    store = tmp_path / "store"
    store.mkdir()
    log = tmp_path / "server.log"
    with ServerProcess("--store", str(store), "--threads", "4", log_path=log) as srv:
        yield srv


def test_concurrent_patches_of_different_keys_all_land(server: ServerProcess) -> None:
    status, _, _ = server.request(
        "PUT", f"/api/configs/{MAC}", put_body({"base": True}), JSON_HEADERS
    )
    assert status == 200
    writers, rounds = 6, 5
    statuses: list[int] = []
    lock = threading.Lock()

    def writer(number: int) -> None:
        for round_ in range(rounds):
            patch = json.dumps({f"key{number}": round_}).encode()
            answer = server.request("PATCH", f"/api/configs/{MAC}", patch, {"Content-Type": MERGE})
            with lock:
                statuses.append(answer[0])

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert statuses == [200] * (writers * rounds)
    _, _, data = server.request("GET", f"/api/configs/{MAC}.json")
    assert json.loads(data) == {"base": True, **{f"key{n}": rounds - 1 for n in range(writers)}}
