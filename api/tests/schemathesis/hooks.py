"""schemathesis hooks for api/tests/schemathesis.rs (loaded through SCHEMATHESIS_HOOKS).

The provider's callback is authenticated by an HMAC over the raw body, which no generator can
guess: without this hook every generated callback stops at 401 and the parser behind the
signature is never fuzzed. When schemathesis sends the callback's security header
(Paystream-Signature), this replaces it with a valid signature of the exact bytes the request
will carry; when it leaves the header out (its ignored_auth check), the request goes unsigned
and must be refused.
"""

import hashlib
import hmac
import json
import os
import time

import schemathesis

CALLBACK_PATH = "/api/v1/callback"
SIGNATURE_HEADER = "paystream-signature"
SECRET = os.environ["PAYSTREAM_SCHEMATHESIS_WEBHOOK_SECRET"].encode()


def _wire_bytes(body):
    """The body as the requests transport puts it on the wire (json.dumps, allow_nan=False)."""
    if isinstance(body, bytes):
        return body
    try:
        return json.dumps(body, allow_nan=False).encode("utf-8")
    except (TypeError, ValueError):
        return None


@schemathesis.hook
def before_call(context, case, kwargs):
    if case.operation.path != CALLBACK_PATH or not case.headers:
        return
    names = [name for name in case.headers if name.lower() == SIGNATURE_HEADER]
    if not names:
        return
    body = _wire_bytes(case.body)
    if body is None:
        return
    t = int(time.time())
    mac = hmac.new(SECRET, f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    for name in names:
        case.headers[name] = f"t={t},v1={mac}"
