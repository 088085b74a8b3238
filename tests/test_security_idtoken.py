"""Issue #5 §2: ID tokens the emulator signs badly on demand are refused, with PEM and JWKS certs alike.

References: OpenID Foundation RP conformance (oidcc-client-test-invalid-sig-*,
-invalid-iss, -invalid-aud, -missing-*, -iat, -kid-absent, -idtoken-sig-none,
-signing-key-rotation), OpenID Connect Core §3.1.3.7, RFC 8725 (JWT BCP),
RFC 9700 §4.x. End-to-end cases meet :func:`security_oracle.assert_rejected`
(one exchange, nothing stored, no session, no frame, logs clean); the last
part unit-tests :class:`IdTokenVerifier` with tokens signed here for what the
emulator cannot produce.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from tornado.httpserver import HTTPServer
from tornado.testing import bind_unused_port
from tornado.web import Application, RequestHandler

from harness import CLIENT_ID
from security_oracle import assert_logs_clean, assert_rejected, close_stack, open_stack
from tornado_signin.config import GoogleConfig
from tornado_signin.errors import TokenVerificationError
from tornado_signin.verify import IdTokenVerifier

pytestmark = pytest.mark.gen_test(timeout=30)

OTHER_CLIENT = "other-client.apps.googleusercontent.com"
SKEW = 60  # the config default


@pytest.fixture(params=["jwks", "pem"])
def stack(request, io_loop):
    stack = io_loop.run_sync(lambda: open_stack(google={"endpoints": {"certs_format": request.param}}))
    yield stack
    io_loop.run_sync(lambda: close_stack(stack))


async def rejected_login(stack, *faults, email="alice@example.com", status=401):
    """Plan ``faults`` on the token endpoint, sign in with a page watching its socket, apply the oracle."""
    for fault in faults:
        stack.emulator.faults.add("token", **fault)
    client = stack.client()
    await client.fetch("/")
    socket = await client.socket()
    code = stack.mint(email)
    response = await client.post_code(code)
    reason = await assert_rejected(stack, response, client=client, socket=socket, statuses={status},
                                   token_requests=1, secrets=[code])
    assert not stack.emulator.faults.pending(), "a planned fault was not used"
    socket.close()
    return reason


def claims(**values):
    return {"kind": "id_token_claims", "set": values}


def unset(*names):
    return {"kind": "id_token_claims", "unset": list(names)}


SIGNING = ["bad_signature", "other_key_same_kid", "none", "hs256_public_key", "hs256_client_secret", "es256", "rs512"]


@pytest.mark.parametrize("method", SIGNING)
async def test_badly_signed_tokens_are_refused(stack, method):
    reason = await rejected_login(stack, {"kind": "id_token_signing", "method": method})
    assert reason == "id token rejected"


def now():
    return int(time.time())


CLAIM_CASES = {
    "iss wrong": lambda: claims(iss="https://evil.example"),
    "iss trailing slash": lambda: claims(iss="https://accounts.google.com/"),
    "iss over http": lambda: claims(iss="http://accounts.google.com"),
    "iss missing": lambda: unset("iss"),
    "iss as a list": lambda: claims(iss=["https://accounts.google.com"]),
    "aud another client": lambda: claims(aud=OTHER_CLIENT),
    "aud missing": lambda: unset("aud"),
    "aud array with an extra audience": lambda: claims(aud=[CLIENT_ID, OTHER_CLIENT]),
    "azp another client": lambda: claims(azp=OTHER_CLIENT),
    "exp past the skew": lambda: claims(iat=now() - 600, exp=now() - SKEW - 30),
    "exp missing": lambda: unset("exp"),
    "iat in the future past the skew": lambda: claims(iat=now() + SKEW + 60, exp=now() + 3600),
    "iat a week old": lambda: claims(iat=now() - 7 * 86400, exp=now() + 3600),
    "iat missing": lambda: unset("iat"),
    "iat as a string": lambda: claims(iat=str(now())),
    "exp as a string": lambda: claims(exp=str(now() + 3600)),
    "exp as a float string": lambda: claims(exp=f"{now() + 3600}.0"),
    "exp as a boolean": lambda: claims(exp=True),
    "sub missing": lambda: unset("sub"),
    "sub empty": lambda: claims(sub=""),
    "sub over-long": lambda: claims(sub="1" * 300),
    "sub with a space": lambda: claims(sub="108 123"),
    "sub as a number": lambda: claims(sub=108123456789012345671),
    "at_hash of another access token": lambda: claims(at_hash="AAAAAAAAAAAAAAAAAAAAAA"),
}


@pytest.mark.parametrize("case", sorted(CLAIM_CASES))
async def test_bad_claims_are_refused(stack, case):
    await rejected_login(stack, CLAIM_CASES[case]())


async def test_issuer_without_scheme_is_accepted(stack):
    stack.emulator.faults.add("token", "issuer_without_scheme")
    client = stack.client()
    response = await client.post_code(stack.mint())
    assert response.code == 200, response.body


RAW_TOKENS = {
    "2 segments": "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxIn0",
    "4 segments": "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln.c2ln",
    "5 segments (JWE)": "eyJhbGciOiJSU0EtT0FFUCJ9.a2V5.aXY.Y2lwaGVy.dGFn",
    "bad base64": "eyJhbGciOiJSUzI1NiJ9.not*base64!.c2ln",
    "non-JSON payload": "eyJhbGciOiJSUzI1NiJ9." + base64.urlsafe_b64encode(b"not json").decode().rstrip("=") + ".c2ln",
    "JSON array header": base64.urlsafe_b64encode(b"[1]").decode().rstrip("=") + ".eyJzdWIiOiIxIn0.c2ln",
    "empty": "",
    "dots only": "..",
    "huge": "eyJ" + "A" * 9000 + ".eyJ.c2ln",
}


@pytest.mark.parametrize("case", sorted(RAW_TOKENS))
async def test_malformed_jwts_are_refused(stack, case):
    value = RAW_TOKENS[case]
    fault = {"kind": "id_token_signing", "method": "raw", "value": value}
    # An empty or huge id_token is a malformed reply of the token endpoint, not a bad token.
    status = 502 if case in ("empty", "huge") else 401
    await rejected_login(stack, fault, status=status)


@pytest.mark.parametrize("case", ["missing", "another domain", "as a list"])
async def test_hosted_domain_is_enforced_when_configured(io_loop, case):
    stack = await open_stack(google={"hosted_domains": ["example.com"]})
    try:
        fault = {"missing": unset("hd"), "another domain": claims(hd="evil.example"),
                 "as a list": claims(hd=["example.com"])}[case]
        await rejected_login(stack, fault)
        # bob@gmail.com has no hd at all, carol's is example.org: both refused without any fault.
        for email in ("bob@gmail.com", "carol@example.org"):
            stack.emulator.stats.clear()
            await rejected_login(stack, email=email)
        # The allowed domain still signs in.
        # (with consent: the refused attempts spent the grant's first refresh token)
        assert (await stack.client().post_code(stack.mint("alice@example.com", prompt="consent"))).code == 200
    finally:
        await close_stack(stack)


async def test_unknown_kid_refetches_certs_once_then_rejects(stack):
    client = stack.client()
    assert (await client.post_code(stack.mint())).code == 200  # keys cached
    known = {r.sub for r in stack.store.records()}
    certs = stack.ctx.certs
    real_clock = certs.clock
    certs.clock = lambda: real_clock() + 10  # past the refetch throttle, well within max-age
    fetched = stack.emulator.stats["certs"]
    stack.emulator.faults.add("token", "id_token_header", set={"kid": "unknown-kid"})
    page = stack.client()
    await page.fetch("/")
    socket = await page.socket()
    response = await page.post_code(stack.mint("bob@gmail.com"))
    await assert_rejected(stack, response, client=page, socket=socket, statuses={401}, known_subs=known)
    assert stack.emulator.stats["certs"] == fetched + 1, "one refetch on an unknown kid"
    # A burst of forged kids does not turn into a burst of certs requests: they
    # wait for the throttle window and share one refetch.
    certs.refetch_interval = 0.5
    stack.emulator.faults.add("token", "id_token_header", set={"kid": "another-unknown-kid"}, count=5)
    pages = [stack.client() for _ in range(5)]
    answers = await asyncio.gather(*(p.post_code(stack.mint("bob@gmail.com")) for p in pages))
    assert [a.code for a in answers] == [401] * 5
    assert stack.emulator.stats["certs"] == fetched + 2
    socket.close()


async def test_key_rotation_between_two_logins_still_works(stack):
    client = stack.client()
    assert (await client.post_code(stack.mint("alice@example.com"))).code == 200
    stack.emulator.rotate_keys()
    certs = stack.ctx.certs
    real_clock = certs.clock
    certs.clock = lambda: real_clock() + 10
    response = await stack.client().post_code(stack.mint("bob@gmail.com"))
    assert response.code == 200, response.body
    assert_logs_clean(stack)


class _Counter(RequestHandler):
    def initialize(self, hits, document):
        self.hits, self.document = hits, document

    def get(self):
        self.hits.append(self.request.path)
        self.write(self.document)


async def test_jku_x5u_and_jwk_headers_are_never_followed(stack):
    """A token signed by the attacker's key, pointing at the attacker's keys in every header way."""
    impostor = stack.emulator.keys.impostor()
    attacker_jwk = {**impostor.jwk(), "kid": "attacker"}
    hits: list[str] = []
    sock, port = bind_unused_port()
    server = HTTPServer(Application([(r"/.*", _Counter, {"hits": hits, "document": {"keys": [attacker_jwk]}})]))
    server.add_sockets([sock])
    evil = f"http://127.0.0.1:{port}"
    try:
        for header in ({"jku": evil + "/jwks", "kid": "attacker"}, {"x5u": evil + "/cert.pem", "kid": "attacker"},
                       {"jwk": attacker_jwk, "kid": "attacker"},
                       {"jku": evil + "/jwks", "x5u": evil + "/x5u", "jwk": attacker_jwk}):
            stack.emulator.stats.clear()
            await rejected_login(stack, {"kind": "id_token_signing", "method": "other_key_same_kid"},
                                 {"kind": "id_token_header", "set": header})
        assert hits == [], hits
    finally:
        server.stop()


# -- unit tests of the verifier, with tokens signed here ---------------------------------------------

KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


class FixedCerts:
    def __init__(self, keys):
        self.keys = keys
        self.asked: list[str] = []

    async def get_key(self, kid):
        self.asked.append(kid)
        return self.keys.get(kid)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign(payload: dict, header: dict | None = None, key=KEY) -> str:
    head = {"alg": "RS256", "kid": "k1", "typ": "JWT", **(header or {})}
    signing_input = f"{b64(json.dumps(head).encode())}.{b64(json.dumps(payload).encode())}"
    signature = key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{b64(signature)}"


def good_claims(**changes):
    t = int(time.time())
    base = {"iss": "https://accounts.google.com", "aud": CLIENT_ID, "azp": CLIENT_ID, "sub": "1081234",
            "email": "a@example.com", "email_verified": True, "iat": t, "exp": t + 3600}
    base.update(changes)
    return {k: v for k, v in base.items() if v is not ...}


def verifier(**google):
    config = GoogleConfig(client_id=CLIENT_ID, client_secret="x" * 20, **google)
    return IdTokenVerifier(config, FixedCerts({"k1": KEY.public_key()}))


async def test_unit_good_token_passes():
    claims_ = await verifier().verify(sign(good_claims()))
    assert claims_.sub == "1081234" and claims_.email_verified is True


@pytest.mark.parametrize("value, expected", [(True, True), ("true", False), (1, False), ("True", False), (None, False)])
async def test_unit_email_verified_counts_only_as_the_boolean_true(value, expected):
    claims_ = await verifier().verify(sign(good_claims(email_verified=value)))
    assert claims_.email_verified is expected


@pytest.mark.parametrize("case, token", [
    ("crit header", lambda: sign(good_claims(), {"crit": ["exp"], "exp": 1})),
    ("kid missing", lambda: sign(good_claims(), {"kid": None})),
    ("kid over-long", lambda: sign(good_claims(), {"kid": "k" * 200})),
    ("alg lower case", lambda: sign(good_claims(), {"alg": "rs256"})),
    ("alg PS256", lambda: sign(good_claims(), {"alg": "PS256"})),
    ("signed by another RSA key", lambda: sign(good_claims(), key=rsa.generate_private_key(65537, 2048))),
    ("payload is a JSON list", lambda: sign([1, 2])),  # type: ignore[arg-type]
    ("aud a one-element list of another client", lambda: sign(good_claims(aud=[OTHER_CLIENT]))),
    ("aud an empty list", lambda: sign(good_claims(aud=[]))),
    ("azp null", lambda: sign(good_claims(azp=None))),
    ("exp just past the skew", lambda: sign(good_claims(exp=int(time.time()) - SKEW - 2))),
    ("iat a float", lambda: sign(good_claims(iat=time.time()))),
    ("too long", lambda: sign(good_claims(pad="x" * 9000))),
    ("trailing garbage", lambda: sign(good_claims()) + "AA"),
    ("signature stripped", lambda: sign(good_claims()).rsplit(".", 1)[0] + "."),
    ("not a string", lambda: {"alg": "RS256"}),
])
async def test_unit_refusals_the_emulator_cannot_produce(case, token):
    with pytest.raises(TokenVerificationError) as info:
        await verifier().verify(token())
    assert "eyJ" not in str(info.value)  # the message names the rule, never the token


async def test_unit_clock_skew_is_honoured_both_ways():
    t = int(time.time())
    await verifier().verify(sign(good_claims(exp=t - SKEW + 5, iat=t - 3000)))
    await verifier().verify(sign(good_claims(iat=t + SKEW - 5)))
    with pytest.raises(TokenVerificationError):
        await verifier().verify(sign(good_claims(iat=t + SKEW + 5)))


async def test_unit_at_hash_is_checked_against_the_access_token():
    digest = __import__("hashlib").sha256(b"ya29.good").digest()[:16]
    token = sign(good_claims(at_hash=b64(digest)))
    await verifier().verify(token, access_token="ya29.good")
    with pytest.raises(TokenVerificationError):
        await verifier().verify(token, access_token="ya29.other")
