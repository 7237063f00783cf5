"""Uses the client openapi-python-client generated from a live /openapi.json (the package
zs_client, on sys.path) against a running api_power: create, get, patch, list, a custom action
and what a refused request gives. Prints one JSON object of what it saw; the Rust test
(examples/tests/generated_client.rs) asserts it. Usage: python use_client.py <base URL>"""

import json
import sys

from zs_client import Client
from zs_client.api.power import (
    create_power,
    get_power,
    list_power,
    patch_power,
    power_reset,
    power_square,
)
from zs_client.models import (
    CreatePowerBody,
    Error,
    PatchPowerBody,
    Power,
    PowerDocument,
    PowerPatch,
    ResourceId,
)

base = sys.argv[1]
client = Client(base_url=base, raise_on_unexpected_status=True, timeout=10.0)
seen = {}

created = create_power.sync_detailed(
    client=client, body=CreatePowerBody(resource_id="g1", resource_data=Power(value=7))
)
assert isinstance(created.parsed, ResourceId), created
seen["create"] = {"status": int(created.status_code), "resource_id": created.parsed.resource_id,
                  "version": created.parsed.version}
generated = create_power.sync(client=client, body=CreatePowerBody(resource_data=Power(value=2)))
assert isinstance(generated, ResourceId), generated
seen["create_generated_id"] = generated.resource_id

got = get_power.sync("g1", client=client)
assert isinstance(got, PowerDocument), got
seen["get"] = {"resource_id": got.resource_id, "value": got.resource_data.value,
               "status": got.resource_data.status, "version": got.version}

patch = PowerPatch.from_dict({"$set": {"description": "seven", "value": 8}})
patched = patch_power.sync("g1", client=client, body=PatchPowerBody(patch=patch), if_match='"1"')
assert isinstance(patched, PowerDocument), patched
seen["patch"] = {"value": patched.resource_data.value,
                 "description": patched.resource_data.description, "version": patched.version}

squared = power_square.sync_detailed("g1", client=client)
seen["square"] = {"status": int(squared.status_code), "result": squared.parsed,
                  "etag": squared.headers.get("etag")}

# `where` is declared as a JSON object (`content: application/json`), a form of query parameter
# openapi-python-client 0.29.1 leaves out of the generated function: it is passed through the
# generated client's own httpx client, and the answer parsed with the generated model.
response = client.get_httpx_client().get(
    "/power", params={"where": json.dumps({"status": "done"}), "sort": "-value", "limit": 10}
)
assert response.status_code == 200, response.text
listed = [PowerDocument.from_dict(d) for d in response.json()]
# sort and limit are generated parameters.
by_value = list_power.sync(client=client, sort="-value", limit=10)
assert isinstance(by_value, list), by_value
seen["list_sorted"] = [d.resource_id for d in by_value]
seen["list_done"] = [
    {"resource_id": d.resource_id, "value": d.resource_data.value,
     "result": d.resource_data.result, "status": d.resource_data.status}
    for d in listed
]
seen["list_all"] = sorted(d.resource_id for d in list_power.sync(client=client))

reset = power_reset.sync(client=client)
seen["reset"] = reset

# A stale If-Match: the client parses the documented 412 as an Error.
stale = patch_power.sync_detailed("g1", client=client, body=PatchPowerBody(patch=patch), if_match='"1"')
assert isinstance(stale.parsed, Error), stale
seen["stale"] = {"status": int(stale.status_code), "error": stale.parsed.error}

# An unknown id: the documented 404, an Error.
missing = get_power.sync_detailed("nope", client=client)
assert isinstance(missing.parsed, Error), missing
seen["missing"] = {"status": int(missing.status_code), "error": missing.parsed.error}

print(json.dumps(seen))
