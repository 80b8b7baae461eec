"""The published Python SDK (callingbox==0.1.0) and its CLI, unchanged,
against a running CallingBox server (CALLINGBOX_BASE_URL, CALLINGBOX_API_KEY).

Exits non-zero with a message on the first thing that does not work.
"""

import json
import os
import subprocess
import sys

import callingbox
from callingbox import Callingbox, tool
from callingbox._exceptions import AuthenticationError, BadRequestError, NotFoundError


def check(condition, message):
    if not condition:
        print(f"FAIL: {message}", file=sys.stderr)
        sys.exit(1)


client = Callingbox()  # key and base URL from the environment

# Numbers: search (bare list), purchase, list (Page), iterate, inbound config.
offers = client.numbers.search_available(area_code="415", limit=3)
check(len(offers) == 3, f"search_available gave {offers}")
check(offers[0].phone_number.startswith("+1415"), f"offer {offers[0]}")
bought = [client.numbers.purchase(o.phone_number) for o in offers]
check(all(n.status == "active" for n in bought), "purchased numbers are active")
page = client.numbers.list(limit=2)
check(len(page) == 2 and page.has_more, f"numbers page {page}")
check([n.id for n in page] == [bought[2].id, bought[1].id], "numbers newest first")
every = list(client.numbers.iter_numbers(limit=1))
check([n.id for n in every] == [b.id for b in reversed(bought)], f"iter_numbers {every}")
updated = client.numbers.update_inbound_config(
    bought[1].id, enabled=True, prompt="Take a message.", returns={"name": "string"},
    webhook_url=None, language="en", tools=None, voicemail_action="hangup",
)
check(updated.inbound_enabled and updated.inbound_prompt == "Take a message.", f"inbound {updated}")

# Calls: the prompt-era create with the tool DSL, retrieve, list, transcript.
lookup = tool.http(
    name="lookup_order", description="Look up an order", url="https://example.com/orders",
    parameters=tool.object(order_id=tool.string(description="The order id")),
)
hang_up = tool.builtin(name="end_call", description="Hang up")
call = client.calls.create(
    "+14155550190", prompt="Confirm the order.", context={"order": "A1"},
    returns={"confirmed": "boolean"}, language="en", from_=bought[0].e164,
    voicemail_action="hangup", tools=[lookup, hang_up],
)
check(call.status in ("queued", "initiated", "ringing"), f"new call status {call.status}")
check(call.direction == "outbound" and call.language == "en", f"call {call}")
check(call.from_number == bought[0].e164, "from_ honoured")
check(call.tools and call.tools[0]["name"] == "lookup_order", f"tools {call.tools}")
again = client.calls.retrieve(call.id)
check(again.id == call.id and again.prompt == "Confirm the order.", "retrieve")
second = client.calls.create("+14155550191", prompt="Hi")
calls = client.calls.list(limit=1)
check(len(calls) == 1 and calls.has_more and calls[0].id == second.id, f"calls page {calls}")
ids = [c.id for c in client.calls.iter_calls(limit=1)]
check(ids[:2] == [second.id, call.id], f"iter_calls {ids}")
older = client.calls.list(ending_before=call.id)
check([c.id for c in older] == [second.id], "ending_before")
check(client.calls.retrieve_transcript(call.id) == [], "empty transcript")

# Errors map to the SDK's exceptions.
try:
    client.calls.retrieve("00000000-0000-4000-8000-000000000000")
    check(False, "unknown call should be NotFoundError")
except NotFoundError as err:
    check("not found" in str(err), f"message {err}")
try:
    client.calls.create("not-a-number", prompt="x")
    check(False, "bad number should be BadRequestError")
except BadRequestError as err:
    check("E.164" in str(err), f"message {err}")
try:
    Callingbox(api_key="sk_live_wrong").calls.list()
    check(False, "bad key should be AuthenticationError")
except AuthenticationError:
    pass

# Webhook endpoints, when the server has them.
if os.environ.get("CHECK_WEBHOOKS") == "1":
    endpoint = client.webhooks.create_endpoint("https://example.com/hooks", description="test")
    check(endpoint.signing_secret.startswith("whsec_"), "endpoint secret")
    check(any(e.id == endpoint.id for e in client.webhooks.list_endpoints()), "list endpoints")
    client.webhooks.update_endpoint(endpoint.id, description="changed")
    check(client.webhooks.get_endpoint(endpoint.id).description == "changed", "update endpoint")
    deliveries = client.webhooks.list_deliveries(call_id=call.id)
    check(isinstance(deliveries, list), "list deliveries")
    client.webhooks.delete_endpoint(endpoint.id)

# The SDK's CLI, unchanged.
def cli(*args):
    env = dict(os.environ)
    out = subprocess.run([sys.executable, "-m", "callingbox", "--json", *args],
                         capture_output=True, text=True, env=env, timeout=60)
    return out.returncode, out.stdout, out.stderr

code, out, err = cli("calls", "list", "--limit", "1")
check(code == 0, f"cli calls list: {code} {err}")
check(json.loads(out)["data"][0]["id"] == second.id, f"cli calls list output {out}")
code, out, err = cli("calls", "get", call.id)
check(code == 0 and json.loads(out)["id"] == call.id, f"cli calls get {code} {err}")
code, out, err = cli("numbers", "search", "--area-code", "212", "--limit", "2")
check(code == 0 and len(json.loads(out)) == 2, f"cli numbers search {code} {out} {err}")
code, out, err = cli("calls", "get", "00000000-0000-4000-8000-000000000000")
check(code == 4, f"cli not found exit code {code}")
code, out, err = cli("call", "--to", "+14155550192", "--prompt", "Hi", "--no-wait")
check(code == 0 and json.loads(out)["to_number"] == "+14155550192", f"cli call {code} {out} {err}")

print(f"SDK {callingbox.__version__ if hasattr(callingbox, '__version__') else '0.1.0'}: all checks passed")
