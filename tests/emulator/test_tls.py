"""HTTPS workers under a root CA shaped like Vast's (issue 18, the emulator's side)."""

from __future__ import annotations

import http.client
import ssl
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
import requests
from cryptography import x509

from dispatcher.emulator import ConfigError, Emulator

from .conftest import FAST, assign, call, make_config

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def vast() -> Iterator[Emulator]:
    cfg = make_config(endpoints={"s": {"workers": 2, "concurrency": 4, "tls": True,
                                       "latency": FAST},
                                 "plain": {"workers": 1, "latency": FAST}})
    with Emulator(cfg) as emulator:
        yield emulator


def _get(url: str, ctx: ssl.SSLContext) -> int:
    """One HTTPS request with exactly this client context."""
    parts = urlsplit(url)
    conn = http.client.HTTPSConnection(parts.hostname, parts.port, context=ctx, timeout=10)
    try:
        conn.request("POST", "/x", body="{}", headers={"Content-Type": "application/json"})
        return conn.getresponse().status
    finally:
        conn.close()


def test_https_assignments_verify_against_the_served_root(vast: Emulator) -> None:
    a = assign(vast, "s")
    assert a["url"].startswith("https://127.0.0.1:") and a["url"] in vast.worker_urls("s")
    assert assign(vast, "plain")["url"].startswith("http://")
    served = requests.get(vast.url + "/_emulator/ca.pem", timeout=5)
    assert served.status_code == 200 and served.text == vast.ca_pem
    assert open(vast.ca_path).read() == vast.ca_pem
    r = requests.post(a["url"] + "/v1/completions", json={"auth_data": a, "payload": {"id": 1}},
                      verify=vast.ca_path, timeout=10)  # requests' own context, Python 3.11
    assert r.status_code == 200 and r.json()["worker"] == a["url"]
    with pytest.raises(requests.exceptions.SSLError):  # not a public CA
        call(assign(vast, "s"), {"id": 2})


def test_the_root_has_vasts_shape(vast: Emulator) -> None:
    root = x509.load_pem_x509_certificate(vast.ca_pem.encode())
    bc = root.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert bc.ca is True and bc.path_length is not None
    with pytest.raises(x509.ExtensionNotFound):
        root.extensions.get_extension_for_class(x509.KeyUsage)


def test_strict_verification_fails_as_on_python_3_13_and_clearing_it_passes(
        vast: Emulator) -> None:
    url = assign(vast, "s")["url"]
    ctx = ssl.create_default_context(cafile=vast.ca_path)  # the chain and the IP are checked
    assert _get(url, ctx) == 422  # reached the worker (an empty body is refused)
    strict = ssl.create_default_context(cafile=vast.ca_path)
    strict.verify_flags |= ssl.VERIFY_X509_STRICT  # Python 3.13+'s default
    with pytest.raises(ssl.SSLCertVerificationError, match="keyCertSign"):
        _get(url, strict)
    relaxed = ssl.create_default_context(cafile=vast.ca_path)
    relaxed.verify_flags |= ssl.VERIFY_X509_STRICT
    relaxed.verify_flags &= ~ssl.VERIFY_X509_STRICT  # Vast's client: only this flag cleared
    assert relaxed.check_hostname and relaxed.verify_mode == ssl.CERT_REQUIRED
    assert _get(url, relaxed) == 422


def test_each_worker_has_its_own_certificate_and_another_root_fails(vast: Emulator) -> None:
    def leaf(url: str) -> x509.Certificate:
        parts = urlsplit(url)
        pem = ssl.get_server_certificate((parts.hostname, parts.port))
        return x509.load_pem_x509_certificate(pem.encode())

    first, second = (leaf(u) for u in vast.worker_urls("s"))
    assert first.serial_number != second.serial_number
    san = first.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    with Emulator(make_config(endpoints={"s": {"workers": 1, "tls": True}})) as other:
        assert other.ca_pem != vast.ca_pem
        with pytest.raises(ssl.SSLCertVerificationError):
            _get(vast.worker_urls("s")[0], ssl.create_default_context(cafile=other.ca_path))


def test_tls_config_rules(vast: Emulator) -> None:
    with pytest.raises(ConfigError, match="endpoints.s.tls: cannot change"):
        vast.configure({"endpoints": {"s": {"tls": False}}})
    with pytest.raises(ConfigError, match="endpoints.p.tls"):
        make_config(endpoints={"p": {"workers_from": "pyworker", "tls": True}})
    with pytest.raises(ConfigError, match="endpoints.e.tls"):
        make_config(endpoints={"e": {"tls": "yes"}})
    vast.configure({"endpoints": {"later": {"workers": 1, "tls": True, "latency": FAST}}})
    a = assign(vast, "later")
    assert a["url"].startswith("https://")
    r = requests.post(a["url"] + "/x", json={"auth_data": a, "payload": {}},
                      verify=vast.ca_path, timeout=10)
    assert r.status_code == 200


def test_the_root_files_go_when_the_emulator_stops() -> None:
    vast = Emulator(make_config(endpoints={"s": {"workers": 1, "tls": True}})).start()
    path = vast.ca_path
    assert open(path).read().startswith("-----BEGIN CERTIFICATE-----")
    vast.stop()
    with pytest.raises(FileNotFoundError):
        open(path)
    with pytest.raises(RuntimeError):
        vast.ca_pem  # noqa: B018
