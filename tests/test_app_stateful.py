"""A Hypothesis state machine drives the REST API and checks it against a plain dict."""

from __future__ import annotations

import json
from typing import Any

import webtest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from iot_config_core import MacAddress, merge_patch, open_store
from iot_config_server import Settings, create_app

MACS = [
    MacAddress.parse(m) for m in ("00-00-00-00-00-01", "aa-bb-cc-dd-ee-ff", "12-34-56-78-9a-bc")
]
STALE = '"00000000000000000000000000000000"'

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**6), 10**6) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=8,
)
contents = st.dictionaries(
    st.sampled_from(["deviceName", "enableOTA", "deviceEntityId", "x", "ü"]),
    json_values,
    max_size=4,
)
#: Merge patches: ``null`` removes a key, an object merges into an object, anything else replaces.
merge_patches = st.dictionaries(
    st.sampled_from(["deviceName", "enableOTA", "x", "ü", "new"]),
    st.none() | json_values,
    max_size=3,
)
preconditions = st.sampled_from(
    ["none", "if-match-current", "if-match-stale", "if-match-any", "if-none-match-any"]
)


def dotted(mac: MacAddress) -> str:
    h = f"{mac.value:012x}"
    return f"{h[0:4]}.{h[4:8]}.{h[8:12]}"


class ApiMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.app = webtest.TestApp(
            create_app(open_store("memory://fleet", create=True), Settings())
        )
        self.model: dict[MacAddress, tuple[dict[str, Any], str]] = {}
        #: The mode of the ``default`` schema ("x", when present, must be a string), or None.
        self.schema: str | None = None

    def _violates(self, content: dict[str, Any]) -> bool:
        return self.schema is not None and "x" in content and not isinstance(content["x"], str)

    def _headers(self, mac: MacAddress, precondition: str) -> dict[str, str]:
        current = self.model.get(mac)
        if precondition == "if-match-current":
            return {"If-Match": f'"{current[1]}"'} if current else {"If-Match": STALE}
        if precondition == "if-match-stale":
            return {"If-Match": STALE}
        if precondition == "if-match-any":
            return {"If-Match": "*"}
        if precondition == "if-none-match-any":
            return {"If-None-Match": "*"}
        return {}

    @rule(
        mac=st.sampled_from(MACS),
        spelling=st.integers(0, 3),
        content=contents,
        allow_overwrite=st.booleans(),
        precondition=preconditions,
    )
    def put(
        self,
        mac: MacAddress,
        spelling: int,
        content: dict[str, Any],
        allow_overwrite: bool,
        precondition: str,
    ) -> None:
        text = [
            str(mac),
            mac.with_separator(":", upper=True),
            str(mac).replace("-", ""),
            dotted(mac),
        ][spelling]
        headers = self._headers(mac, precondition)
        exists = mac in self.model
        if self.schema == "strict" and self._violates(content):
            expected = 422  # the content is checked before the preconditions
        elif (
            precondition == "if-match-stale"
            or (precondition in ("if-match-current", "if-match-any") and not exists)
            or (precondition == "if-none-match-any" and exists)
        ):
            expected = 412
        elif not allow_overwrite and exists:
            expected = 409
        else:
            expected = 200
        response = self.app.put_json(
            f"/api/configs/{text}",
            {"content": content, "allow_overwrite": allow_overwrite},
            headers=headers,
            status=expected,
        )
        if expected == 200:
            assert response.json["mac_address"] == str(mac)
            assert response.json["content"] == content
            self.model[mac] = (content, response.headers["ETag"].strip('"'))
        else:
            assert (
                response.json["code"]
                == {
                    409: "CONFLICT",
                    412: "PRECONDITION_FAILED",
                    422: "SCHEMA_VIOLATION",
                }[expected]
            )

    @rule(
        mac=st.sampled_from(MACS),
        precondition=st.sampled_from(["none", "if-match-current", "if-match-stale"]),
    )
    def delete(self, mac: MacAddress, precondition: str) -> None:
        headers = self._headers(mac, precondition)
        if mac not in self.model:
            # RFC 9110 13.2.1: preconditions are ignored when the answer would be 404 anyway
            expected = 404
        elif precondition == "if-match-stale":
            expected = 412
        else:
            expected = 204
        self.app.delete(f"/api/configs/{mac.with_separator(':')}", headers=headers, status=expected)
        if expected == 204:
            del self.model[mac]

    @rule(
        mac=st.sampled_from(MACS),
        patch=merge_patches,
        precondition=st.sampled_from(["none", "if-match-current", "if-match-stale"]),
    )
    def patch(self, mac: MacAddress, patch: dict[str, Any], precondition: str) -> None:
        headers = {
            **self._headers(mac, precondition),
            "Content-Type": "application/merge-patch+json",
        }
        if mac not in self.model:
            expected = 404  # nothing to patch, whatever the precondition
        elif precondition == "if-match-stale":
            expected = 412
        else:
            before = self.model[mac][0]
            after = merge_patch(before, patch)
            changed = json.dumps(after) != json.dumps(before)  # an unchanged one is not written
            expected = 422 if changed and self.schema == "strict" and self._violates(after) else 200
        response = self.app.patch(
            f"/api/configs/{mac}", json.dumps(patch), headers=headers, status=expected
        )
        if expected == 200:
            before, etag = self.model[mac]
            content = merge_patch(before, patch)
            assert response.json["content"] == content
            new_etag = response.headers["ETag"].strip('"')
            if json.dumps(content) == json.dumps(before):
                assert new_etag == etag  # an unchanged config is not rewritten
            self.model[mac] = (content, new_etag)

    @rule(mode=st.sampled_from(["strict", "relaxed"]))
    def put_schema(self, mode: str) -> None:
        schema = {"properties": {"x": {"type": "string"}}}
        body = {"schema": schema, "relaxed": mode == "relaxed"}
        self.app.put_json("/api/schemas/default", body, status=200)
        self.schema = mode

    @rule()
    def delete_schema(self) -> None:
        self.app.delete("/api/schemas/default", status=204 if self.schema else 404)
        self.schema = None

    @rule(mac=st.sampled_from(MACS))
    def poll(self, mac: MacAddress) -> None:
        url = f"/esp32/config/{mac}.json"
        if mac not in self.model:
            self.app.get(url, status=404)
            return
        content, etag = self.model[mac]
        response = self.app.get(url)
        assert json.loads(response.body) == content
        assert response.headers["ETag"] == f'"{etag}"'
        self.app.get(url, headers={"If-None-Match": f'W/"{etag}"'}, status=304)

    @invariant()
    def report_lists_the_violations(self) -> None:
        report = self.app.get("/api/validation").json
        assert report["checked"] == len(self.model)
        assert [v["mac_address"] for v in report["violations"]] == [
            str(mac) for mac in sorted(self.model) if self._violates(self.model[mac][0])
        ]

    @invariant()
    def listing_matches(self) -> None:
        listing = self.app.get("/api/configs").json
        assert listing["count"] == len(self.model)
        assert [c["mac_address"] for c in listing["configs"]] == [
            str(m) for m in sorted(self.model)
        ]
        for summary in listing["configs"]:
            content = self.model[MacAddress.parse(summary["mac_address"])][0]
            name = content.get("deviceName")
            assert summary["device_name"] == (name if isinstance(name, str) else None)
            ota = content.get("enableOTA")
            assert summary["enable_ota"] == (ota if isinstance(ota, bool) else None)


ApiMachine.TestCase.settings = settings(max_examples=40, stateful_step_count=15)
TestApi = ApiMachine.TestCase
