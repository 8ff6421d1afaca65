"""`helm test`: one visitor's whole visit through the release's Services, from inside the cluster.

Runs in the app image (Python's standard library and PyJWT only). Creates a room of capacity 1 on
the admin Service, joins through the public Service, heartbeats until admitted, verifies the entry
token against the JWKS the public Service serves (RS256 or ES256, aud = room, sub = ticket), leaves, and
checks that the ticket has then left. Prints one JSON line per step; any failure exits non-zero.
"""

import json
import os
import sys
import time
import urllib.error
import urllib.request
import uuid

import jwt

PUBLIC = os.environ["WAITROOM_TEST_PUBLIC_URL"]
ADMIN = os.environ["WAITROOM_TEST_ADMIN_URL"]
ADMIN_TOKEN = os.environ["WAITROOM_TEST_ADMIN_TOKEN"]
DEADLINE = time.monotonic() + float(os.environ.get("WAITROOM_TEST_TIMEOUT_S", "60"))


def call(method, url, body=None, token=None, headers=None):
    """(status, JSON body or None) of one request; HTTP errors are answers, not exceptions."""
    if not url.startswith(("http://", "https://")):
        fail(f"not an http URL: {url}")
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, method=method, data=data)  # noqa: S310 (checked above)
    request.add_header("Accept", "application/json")
    if body is not None:
        request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 (checked above)
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, raw = error.code, error.read()
    return status, json.loads(raw) if raw else None


def step(name, **fields):
    sys.stdout.write(json.dumps({"step": name, **fields}) + "\n")
    sys.stdout.flush()


def fail(message):
    step("failed", detail=message)
    sys.exit(1)


def retrying(what, attempt):
    """Repeat attempt() -> (done, result) until done or the deadline (a replica may still be starting)."""
    while True:
        done, result = attempt()
        if done:
            return result
        if time.monotonic() > DEADLINE:
            fail(f"{what}: {result}")
        time.sleep(0.5)


def main():
    room = f"helm-test-{uuid.uuid4().hex[:12]}"

    def create_room():
        status, body = call("PUT", f"{ADMIN}/v1/admin/rooms/{room}", {"capacity": 1}, token=ADMIN_TOKEN)
        return status in (200, 201), (status, body)

    retrying("create the room", create_room)
    step("room_created", room=room)

    key = str(uuid.uuid4())

    def join():
        status, body = call("POST", f"{PUBLIC}/v1/rooms/{room}/tickets", {}, headers={"Idempotency-Key": key})
        return status in (200, 201, 202), (status, body)

    ticket = retrying("join", join)[1]
    ticket_id, ticket_token = ticket["ticket_id"], ticket["ticket_token"]
    step("joined", ticket_id=ticket_id, state=ticket["state"], queue_no=ticket.get("queue_no"))

    def heartbeat():
        status, body = call("POST", f"{PUBLIC}/v1/rooms/{room}/tickets/{ticket_id}/heartbeat", token=ticket_token)
        admitted = status == 200 and body["state"] == "admitted" and body.get("entry_token")
        return bool(admitted), (status, body)

    admitted = retrying("heartbeat until admitted", heartbeat)[1]
    step("admitted", position=admitted["position"])

    jwks = jwt.PyJWKClient(f"{PUBLIC}/.well-known/jwks.json", cache_keys=False)
    token = admitted["entry_token"]
    key_of_token = jwks.get_signing_key_from_jwt(token)
    claims = jwt.decode(token, key_of_token.key, algorithms=["RS256", "ES256"], audience=room)
    if claims["sub"] != ticket_id:
        fail(f"entry token for {claims['sub']}, not ticket {ticket_id}")
    step("entry_token_verified", kid=key_of_token.key_id, aud=claims["aud"], exp_in_s=claims["exp"] - int(time.time()))

    status, _ = call("DELETE", f"{PUBLIC}/v1/rooms/{room}/tickets/{ticket_id}", token=ticket_token)
    if status != 204:
        fail(f"leave answered {status}")

    def has_left():
        status, body = call("GET", f"{PUBLIC}/v1/rooms/{room}/tickets/{ticket_id}", token=ticket_token)
        return status == 410 and body["error"] == "ticket_left", (status, body)

    retrying("the ticket to have left", has_left)
    step("left", ticket_id=ticket_id)

    status, body = call("GET", f"{PUBLIC}/v1/rooms/{room}")
    if status != 200 or body["active"] != 0:
        fail(f"room after leaving: {status} {body}")
    step("passed", room=room)


main()
