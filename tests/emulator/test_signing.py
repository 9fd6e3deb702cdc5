"""Signing as Vast signs, and the checks where the emulator is stricter than Vast."""

from __future__ import annotations

import base64
import json

import pytest
import requests
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

from dispatcher.emulator import Emulator
from dispatcher.emulator.signing import SigningKey, message

from .conftest import FAST, assign, call, make_config

pytestmark = pytest.mark.timeout(60)


def _verify(pem: bytes, url: str, signature: str) -> None:
    """Vast's check, done independently: raises InvalidSignature if it fails."""
    key = serialization.load_pem_public_key(pem)
    signed = json.dumps({"url": url}, indent=4, sort_keys=True).encode()
    key.verify(base64.b64decode(signature), signed, padding.PKCS1v15(),  # type: ignore[union-attr]
               hashes.SHA256())


def test_pubkey_is_served_and_signs_the_url_as_vast_does(vast: Emulator) -> None:
    r = requests.get(vast.url + "/pubkey/", timeout=5)
    assert r.status_code == 200 and r.text.startswith("-----BEGIN PUBLIC KEY-----")
    assert r.text == vast.pubkey_pem
    a = assign(vast, "llm")
    _verify(r.content, a["url"], a["signature"])
    with pytest.raises(InvalidSignature):
        _verify(r.content, a["url"] + "0", a["signature"])
    # The message is the url alone: another assignment to the same worker, the same signature.
    b = next(x for x in (assign(vast, "llm") for _ in range(3)) if x["url"] == a["url"])
    assert b["signature"] == a["signature"] and b["reqnum"] != a["reqnum"]


def test_message_and_key_cache() -> None:
    assert message("http://h:1") == b'{\n    "url": "http://h:1"\n}'
    key = SigningKey()
    sig = key.sign("http://h:1")
    assert key.sign("http://h:1") is sig  # computed once per url
    assert key.verify("http://h:1", sig) and key.verify("http://h:1", sig)
    assert not key.verify("http://h:2", sig) and not key.verify("http://h:1", "!!")
    assert not key.verify(None, sig) and not SigningKey().verify("http://h:1", sig)


def test_emulators_alive_at_once_hold_different_keys(vast: Emulator) -> None:
    with Emulator(make_config(endpoints={"llm": {"workers": 1, "latency": FAST}})) as other:
        assert other.pubkey_pem != vast.pubkey_pem
        foreign = assign(other, "llm")
    a = assign(vast, "llm")
    # The other emulator's signature for this worker's url would need its key.
    r = call(a, {"id": "x"}, auth={**a, "signature": foreign["signature"]})
    assert r.status_code == 401 and r.content == b""
    assert vast.stats()["workers"]["rejected_signature"] == 1


def test_rotate_key_refuses_assignments_signed_with_the_old_key(vast: Emulator) -> None:
    old_pem, before = vast.pubkey_pem, assign(vast, "llm")
    vast.configure({"action": "rotate_key"})
    assert vast.pubkey_pem != old_pem
    assert requests.get(vast.url + "/pubkey/", timeout=5).text == vast.pubkey_pem
    assert call(before, {"id": "old"}).status_code == 401
    after = assign(vast, "llm")
    _verify(vast.pubkey_pem.encode(), after["url"], after["signature"])
    assert call(after, {"id": "new"}).status_code == 200
    assert vast.stats()["executions_by_payload"] == {"new": 1}
    with pytest.raises(ValueError, match="rotate_key"):
        vast.configure({"action": "rotate_key", "endpoint": "llm"})


@pytest.mark.parametrize("edit, word", [
    (lambda a: {**a, "cost": a["cost"] + 1}, "changed ['cost']"),
    (lambda a: {**a, "zzz": 1}, "added ['zzz']"),
    (lambda a: {k: v for k, v in a.items() if k != "__request_id"}, "dropped ['__request_id']"),
    (lambda a: {**a, "reqnum": a["reqnum"] + 1000}, "not an assignment this emulator issued"),
])
def test_anything_but_the_assignment_verbatim_is_401_tampered(vast: Emulator, edit, word) -> None:
    a = assign(vast, "llm")
    r = call(a, {"id": "t"}, auth=edit(a))
    assert r.status_code == 401 and r.content == b"" and word in r.headers["X-Emulator-Reason"]
    assert vast.stats()["workers"]["rejected_tampered"] == 1
    reordered = dict(reversed(list(a.items())))  # key order is not content
    assert call(a, {"id": "ok"}, auth=reordered).status_code == 200


def test_a_dropped_field_pyworker_requires_is_its_422(vast: Emulator) -> None:
    a = assign(vast, "llm")
    r = call(a, {"id": "d"}, auth={k: v for k, v in a.items() if k not in ("request_idx", "cost")})
    assert r.status_code == 422
    assert r.json() == {"auth_data": {"cost": "missing parameter",
                                      "request_idx": "missing parameter"}}
    assert call(a, {"id": "ok"}).status_code == 200  # refused before it was spent


def test_replay_and_tamper_checks_can_be_switched_off() -> None:
    cfg = make_config(endpoints={"lax": {"workers": 2, "concurrency": 4, "latency": FAST,
                                         "reject_replay": False, "reject_tampered": False}})
    with Emulator(cfg) as vast:
        a = assign(vast, "lax")
        assert call(a, {"id": "1"}).status_code == 200
        assert call(a, {"id": "2"}).status_code == 200  # the same reqnum again, as PyWorker
        assert call(a, {"id": "3"}, auth={**a, "cost": 0, "zzz": 1}).status_code == 200
        other = next(u for u in vast.worker_urls("lax") if u != a["url"])
        assert call(a, {"id": "4"}, url=other).status_code == 200  # PyWorker checks no url
        assert call(a, {"id": "5"}, auth={**a, "signature": "bad"}).status_code == 401
        w = vast.stats()["workers"]
        assert (w["succeeded"], w["rejected_replay"], w["rejected_tampered"]) == (4, 0, 0)
        assert w["rejected_signature"] == 1
        vast.configure({"endpoints": {"lax": {"reject_replay": True}}})
        assert call(a, {"id": "6"}).status_code == 401
        assert vast.stats()["workers"]["rejected_replay"] == 1
    with pytest.raises(ValueError, match="reject_replay"):
        make_config(endpoints={"e": {"reject_replay": "no"}})
