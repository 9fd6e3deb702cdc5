"""submit_many (sync, asyncio) and ``dispatcher submit --jsonl``: real worker, Redis,
emulator."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis

from dispatcher.aio import AsyncClient
from dispatcher.client import Client
from dispatcher.config import Settings
from dispatcher.emulator import Emulator
from dispatcher.errors import InvalidJob
from dispatcher.store import keys

from .conftest import add_endpoint

pytestmark = pytest.mark.timeout(180)


def jobs_for(ep: str, n: int, **extra: Any) -> list[dict[str, Any]]:
    return [{"endpoint": ep, "payload": {"id": uuid.uuid4().hex, "n": i}, "path": "/gen",
             **extra} for i in range(n)]


def pipelines(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Sizes of the pipelines of scripts executed (sync and asyncio); kombu's own
    pipelines (queue bookkeeping) are not ours."""
    import redis.asyncio.client
    import redis.client

    sizes: list[int] = []
    sync_exec = redis.client.Pipeline.execute
    async_exec = redis.asyncio.client.Pipeline.execute

    def ours(p: Any) -> None:
        names = {str(c[0][0]).upper() for c in p.command_stack}
        if names == {"EVALSHA"}:
            sizes.append(len(p.command_stack))

    def sync_wrapper(p: Any, *a: Any, **kw: Any) -> Any:
        ours(p)
        return sync_exec(p, *a, **kw)

    async def async_wrapper(p: Any, *a: Any, **kw: Any) -> Any:
        ours(p)
        return await async_exec(p, *a, **kw)

    monkeypatch.setattr(redis.client.Pipeline, "execute", sync_wrapper)
    monkeypatch.setattr(redis.asyncio.client.Pipeline, "execute", async_wrapper)
    return sizes


def test_ids_in_order_one_round_trip_per_chunk_every_job_run_once(
        client: Client, vast: Emulator, monkeypatch: pytest.MonkeyPatch) -> None:
    ep = add_endpoint(vast, concurrency=64)
    batch = jobs_for(ep, 1100)
    batch[7]["job_id"] = given = f"given-{uuid.uuid4().hex}"
    sizes = pipelines(monkeypatch)
    ids = client.submit_many(batch, chunk=500)
    assert sizes == [500, 500, 100]  # one pipelined round trip per chunk
    assert len(ids) == 1100 and len(set(ids)) == 1100 and ids[7] == given
    jobs = [client.wait(i, timeout=120) for i in ids]
    assert [j.result["payload"] for j in jobs] == [b["payload"] for b in batch]
    stats = vast.stats()["executions_by_payload"]
    assert all(stats[b["payload"]["id"]] == 1 for b in batch)


def test_each_job_is_idempotent_on_its_own_job_id(client: Client, vast: Emulator) -> None:
    ep = add_endpoint(vast)
    batch = jobs_for(ep, 20)
    for i, b in enumerate(batch):
        b["job_id"] = f"b-{uuid.uuid4().hex[:8]}-{i}"
    repeated = batch[:5] + jobs_for(ep, 3) + [batch[5]]  # old, new, old
    first = client.submit_many(batch)
    again = client.submit_many(repeated)
    assert first == [b["job_id"] for b in batch]
    assert again[:5] == first[:5] and again[8] == first[5]
    for i in first + again:
        assert client.wait(i, timeout=60).status == "succeeded"
    stats = vast.stats()["executions_by_payload"]
    assert all(stats[b["payload"]["id"]] == 1 for b in batch)
    # A job_id twice in one batch: the same job, run once.
    twice = jobs_for(ep, 2)
    twice[0]["job_id"] = twice[1]["job_id"] = f"t-{uuid.uuid4().hex}"
    ids = client.submit_many(twice)
    assert ids[0] == ids[1]
    assert client.wait(ids[0], timeout=60).result["payload"] == twice[0]["payload"]
    assert twice[1]["payload"]["id"] not in vast.stats()["executions_by_payload"]


@pytest.mark.parametrize("bad, message", [
    ({"cost": -1}, "jobs[3].cost: must be >= 0, got -1"),
    ({"path": "gen"}, "jobs[3].path: must start with '/'"),
    ({"priority": 12}, "jobs[3].priority: must be an integer from 0 to 9"),
    ({"job_id": "a b"}, "jobs[3].job_id: must be 1-128 characters"),
    ({"colour": "red"}, "jobs[3].colour: unknown field"),
    ({"payload": None, "drop": "payload"}, "jobs[3].payload: is required"),
])
def test_a_bad_job_fails_the_call_before_anything_is_written(
        client: Client, bad: dict[str, Any], message: str) -> None:
    ep = f"never-{uuid.uuid4().hex[:8]}"
    batch = jobs_for(ep, 6)
    for b in batch:
        b["job_id"] = f"w-{uuid.uuid4().hex}"
    if "drop" in bad:
        del batch[3][bad["drop"]]
    else:
        batch[3].update(bad)
    with pytest.raises(InvalidJob) as err:
        client.submit_many(batch, chunk=2)
    assert str(err.value).startswith(message)
    r = client.store.redis
    assert not any(r.exists(keys.job_key(b["job_id"])) for b in batch)


def test_not_a_list_is_refused(client: Client) -> None:
    for bad in ({"endpoint": "x"}, "jobs", 5):
        with pytest.raises(InvalidJob) as err:
            client.submit_many(bad)  # type: ignore[arg-type]
        assert err.value.field == "jobs"
    with pytest.raises(InvalidJob) as err:
        client.submit_many([{"endpoint": "x", "payload": 1, "path": "/x"}, "oops"])
    assert str(err.value).startswith("jobs[1]: must be an object")


def test_asyncio_submit_many(e2e_env: dict[str, str], worker: Any, vast: Emulator,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    ep = add_endpoint(vast)
    batch = jobs_for(ep, 700)
    sizes = pipelines(monkeypatch)

    async def main() -> list[Any]:
        async with AsyncClient(Settings.from_env(e2e_env)) as c:
            ids = await c.submit_many(batch)
            assert sizes == [500, 200]
            with pytest.raises(InvalidJob) as err:
                await c.submit_many([*jobs_for(ep, 2), {"endpoint": ep, "path": "/x"}])
            assert str(err.value) == "jobs[2].payload: is required"
            return [await c.wait(i, timeout=120) for i in ids]

    jobs = asyncio.run(main())
    assert [j.result["payload"] for j in jobs] == [b["payload"] for b in batch]


def cli(env: dict[str, str], *args: str, stdin: str | None = None
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dispatcher", *args], input=stdin,
                          env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=120)


def test_cli_submit_jsonl(e2e_env: dict[str, str], worker: Any, vast: Emulator,
                          client: Client, tmp_path: Path) -> None:
    ep = add_endpoint(vast)
    lines = [{"payload": {"id": uuid.uuid4().hex}, "cost": i} for i in range(1200)]
    lines[5]["path"] = "/other"
    f = tmp_path / "jobs.jsonl"
    f.write_text("\n".join(json.dumps(x) for x in lines[:600]) + "\n\n"
                 + "\n".join(json.dumps(x) for x in lines[600:]) + "\n")
    out = cli(e2e_env, "submit", ep, "--jsonl", str(f), "--path", "/gen", "--priority", "3")
    assert out.returncode == 0, out.stderr
    ids = out.stdout.split()
    assert len(ids) == 1200
    assert "1200/1200" in out.stderr  # the progress bar's last state
    jobs = [client.wait(i, timeout=120) for i in ids]
    assert [j.result["payload"] for j in jobs] == [x["payload"] for x in lines]
    assert jobs[5].result["path"] == "/other" and jobs[6].result["path"] == "/gen"
    assert {j.priority for j in jobs} == {3} and jobs[9].cost == 9


def test_cli_submit_jsonl_refuses_bad_lines_and_writes_nothing(
        e2e_env: dict[str, str], tmp_path: Path) -> None:
    r = redis.Redis.from_url(e2e_env["REDIS_URL"])
    ep = f"never-{uuid.uuid4().hex[:8]}"
    good = [json.dumps({"payload": {"n": i}, "job_id": f"c-{uuid.uuid4().hex}"})
            for i in range(4)]
    cases = {
        "bad-cost": (good[:2] + ['{"payload": 1, "cost": -1}'] + good[2:],
                     "jobs.jsonl:3: jobs[2].cost: must be >= 0, got -1"),
        "bad-json": (good[:1] + ["{not json"], "jobs.jsonl:2: not valid JSON"),
        "endpoint": (good[:1] + ['{"payload": 1, "endpoint": "x"}'],
                     "jobs.jsonl:2: jobs[1].endpoint: the endpoint is the command's"),
    }
    for name, (rows, message) in cases.items():
        f = tmp_path / "jobs.jsonl"
        f.write_text("\n".join(rows) + "\n")
        out = cli(e2e_env, "submit", ep, "--jsonl", str(f), "--path", "/gen")
        assert out.returncode == 2, (name, out.stderr)
        assert message in out.stderr.replace(str(tmp_path) + "/", ""), (name, out.stderr)
        assert out.stdout == ""
    ids = [json.loads(g)["job_id"] for g in good]
    assert not any(r.exists(keys.job_key(i)) for i in ids)
    out = cli(e2e_env, "submit", ep, "--jsonl", "-", "--path", "/gen", stdin=good[0] + "\n")
    assert out.returncode == 0 and out.stdout.split() == [ids[0]]
    Client(Settings.from_env(e2e_env)).cancel(ids[0])


def test_module_function(e2e_env: dict[str, str], worker: Any, vast: Emulator,
                         monkeypatch: pytest.MonkeyPatch) -> None:
    import dispatcher
    from dispatcher.config import get_settings

    for k, v in e2e_env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(dispatcher, "_app", None)
    monkeypatch.setattr(dispatcher, "_default", None)
    get_settings.cache_clear()  # read once per process: this test's environment
    try:
        ep = add_endpoint(vast)
        ids = dispatcher.submit_many(jobs_for(ep, 3))
        assert [dispatcher.wait(i).status for i in ids] == ["succeeded"] * 3
        dispatcher.default_client().close()
    finally:
        get_settings.cache_clear()
