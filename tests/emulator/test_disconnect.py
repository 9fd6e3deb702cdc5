"""A client that closes its connection mid-work stops the simulated work, as Vast's PyWorker
cancels the model call (issue 15 section 1): counted exactly as ``cancelled_by_client``,
and per payload, whether the request was queued, running, streaming or dripping; a worker
stopped under its requests is not the client leaving."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from dispatcher.emulator import Emulator
from tests.poll import until

from .conftest import FAST, assign, call, make_config, send_raw

pytestmark = pytest.mark.timeout(60)


def endpoint(vast: Emulator) -> dict:
    return vast.stats()["endpoints"]["w"]


@pytest.fixture
def vast() -> Iterator[Emulator]:
    cfg = make_config(endpoints={"w": {"workers": 1, "concurrency": 2, "queue_depth": 4,
                                       "latency": FAST}})
    with Emulator(cfg) as emulator:
        yield emulator


def test_n_connections_closed_mid_work_are_n_cancellations(vast: Emulator) -> None:
    jobs = {"sleeps": {"sleep": 30}, "hangs": {"hang": True},  # these two run
            "q-sleep": {"sleep": 30}, "q-stream": {"stream": {"pieces": 50, "interval": 1}},
            "q-drip": {"drip": {"interval": 1}}, "q-plain": {}}  # these wait their turn
    socks: list[socket.socket] = []

    def arrived() -> bool:
        ep = endpoint(vast)
        return ep["running"] + ep["queued"] == len(socks)

    for pid, emulate in jobs.items():
        socks.append(send_raw(assign(vast, "w"), {"id": pid, "emulate": emulate}))
        until(arrived, what=f"{pid} to arrive")  # so they queue in this order
    assert (endpoint(vast)["running"], endpoint(vast)["queued"]) == (2, 4)
    # The waiting ones first: a running one that stops lets the next in line start.
    for sock in socks[2:]:
        sock.close()
    until(lambda: endpoint(vast)["queued"] == 0, what="the queue to empty")
    for sock in socks[:2]:
        sock.close()
    until(lambda: endpoint(vast)["outstanding"] == 0 and vast.stats()["in_flight"] == 0,
          what="the work to stop")
    s = vast.stats()
    assert (s["cancelled_by_client"], s["cancelled_while_queued"], s["cancelled"]) == (6, 4, 2)
    assert s["cancelled_by_payload"] == dict.fromkeys(jobs, 1)
    assert s["executions_by_payload"] == {"sleeps": 1, "hangs": 1}  # queued ones never ran
    assert s["worker_seconds_by_payload"]["sleeps"] < 20  # stopped, not slept out
    # The slots are free again.
    assert call(assign(vast, "w"), {"id": "after"}).json()["ok"] is True


def test_a_client_leaving_mid_stream_stops_the_stream(vast: Emulator) -> None:
    r = call(assign(vast, "w"), {"id": "s", "emulate": {
        "stream": {"pieces": 200, "interval": 0.05, "format": "ndjson"}}}, stream=True)
    pieces = r.iter_lines()
    got = [next(pieces) for _ in range(3)]
    assert got[0].startswith(b'{"i":0,')
    r.close()
    until(lambda: vast.stats()["in_flight"] == 0, what="the stream to stop")
    s = vast.stats()
    assert (s["cancelled_by_client"], s["cancelled_by_payload"], s["streams"],
            s["streams_completed"], s["streams_dropped"]) == (1, {"s": 1}, 1, 0, 0)
    assert 3 <= s["stream_pieces_by_payload"]["s"] < 200
    sent = s["stream_pieces"]
    assert vast.stats()["stream_pieces"] == sent  # and no piece after


@pytest.mark.parametrize("emulate", [{"drip": {"interval": 0.05, "count": 1000}},
                                     {"body_drip": {"interval": 0.05}, "size": 10_000},
                                     {"huge": {"bytes": 10**12}}],
                         ids=["drip", "body_drip", "huge"])
def test_a_client_leaving_a_slow_or_endless_answer_stops_it(vast: Emulator,
                                                            emulate: dict) -> None:
    sock = send_raw(assign(vast, "w"), {"id": "x", "emulate": emulate})
    assert sock.recv(1024).startswith(b"HTTP/1.1 200")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()  # a reset: the huge answer's unread bytes are dropped, not drained
    until(lambda: vast.stats()["in_flight"] == 0, what="the answer to stop")
    s = vast.stats()
    assert (s["cancelled_by_client"], s["cancelled_by_payload"], s["succeeded"]) == (1, {"x": 1},
                                                                                      0)


def test_a_worker_stopped_under_its_requests_is_not_the_client_leaving(vast: Emulator) -> None:
    socks = [send_raw(assign(vast, "w"), {"id": f"j{i}", "emulate": {"sleep": 30}})
             for i in range(3)]
    until(lambda: endpoint(vast)["running"] == 2 and endpoint(vast)["queued"] == 1,
          what="the requests to arrive")
    vast.configure({"action": "stop_all", "endpoint": "w"})
    until(lambda: vast.stats()["in_flight"] == 0, what="the requests to die")
    s = vast.stats()
    assert (s["cancelled"], s["cancelled_by_client"], s["cancelled_by_payload"]) == (2, 0, {})
    for sock in socks:
        sock.close()
