"""Scenario results: the rich table on the terminal and the JSON file."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table


@dataclass
class Row:
    """One line of the table: a measure, its value and, if it has one, its target."""

    measure: str
    value: str
    target: str = ""
    ok: bool | None = None
    note: str = ""


@dataclass
class Result:
    """What one scenario measured. ``metrics`` are raw numbers (seconds, bytes, ratios)."""

    key: str
    title: str
    metrics: dict[str, Any] = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0
    profile: dict[str, Any] | None = None

    def row(self, measure: str, value: str, target: str = "", ok: bool | None = None,
            note: str = "") -> None:
        self.rows.append(Row(measure, value, target, ok, note))


def _verdict(ok: bool | None) -> str:
    return {True: "[green]met[/]", False: "[red]MISSED[/]", None: ""}[ok]


def render(console: Console, machine: dict[str, Any], results: list[Result],
           profile: dict[str, Any] | None = None) -> None:
    m = machine
    title = (f"vast-dispatcher bench - {m['date']} - {m['nproc']} cores ({m['cpu']}), "
             f"{m['ram_gib']} GiB - Python {m['python']}, Celery {m['celery']}, "
             f"Redis {m['redis_server']} - code {m.get('git', '?')}")
    table = Table(title=title, show_lines=False, title_justify="left")
    for name, justify in (("scenario", "left"), ("measure", "left"), ("value", "right"),
                          ("target", "right"), ("", "left"), ("note", "left")):
        table.add_column(name, justify=justify, overflow="fold")  # type: ignore[arg-type]
    for res in results:
        if res.error:
            table.add_row(res.title, "[red]did not complete[/]", "", "", "", res.error[:200])
        for i, row in enumerate(res.rows):
            table.add_row(res.title if i == 0 and not res.error else "", row.measure, row.value,
                          row.target, _verdict(row.ok), row.note)
        table.add_section()
    console.print(table)
    if profile and profile.get("summary"):
        p = profile["summary"]
        t = Table(title=f"Worker profile during scenario 1 ({p['samples']} GIL samples)",
                  title_justify="left")
        t.add_column("component (inclusive)")
        t.add_column("% of GIL samples", justify="right")
        for name, share in p["components_pct"]:
            t.add_row(name, f"{share}")
        console.print(t)


def _clean(obj: Any) -> Any:
    """JSON has no NaN: write null instead."""
    if isinstance(obj, float) and (math.isnan(obj) or math.isinf(obj)):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    return obj


def write_json(path: Path, machine: dict[str, Any], config: dict[str, Any],
               results: list[Result], profile: dict[str, Any] | None) -> None:
    doc = {
        "machine": machine,
        "config": config,
        "ok": all(r.error is None for r in results),
        "scenarios": {
            r.key: {"title": r.title, "error": r.error, "seconds": round(r.seconds, 1),
                    **r.metrics, "rows": [asdict(row) for row in r.rows]}
            for r in results
        },
        "profile": profile,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_clean(doc), indent=2) + "\n")


def markdown(doc: dict[str, Any]) -> str:
    """The table of a results JSON as Markdown, for bench/README.md."""
    m = doc["machine"]
    lines = [
        f"{m['date']}; {m['nproc']} cores ({m['cpu']}), {m['ram_gib']} GiB; Python "
        f"{m['python']}, Celery {m['celery']}, kombu {m['kombu']}, redis-py {m['redis_py']}, "
        f"Redis {m['redis_server']}; code {m.get('git', '?')}",
        "",
        "| scenario | measure | value | target | | note |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    verdict = {True: "met", False: "**MISSED**", None: ""}
    for sc in doc["scenarios"].values():
        if sc.get("error"):
            lines.append(f"| {sc['title']} | did not complete | | | | {sc['error'][:200]} |")
        for i, row in enumerate(sc.get("rows", [])):
            cells = [sc["title"] if i == 0 else "", row["measure"], row["value"],
                     row["target"], verdict[row["ok"]], row["note"]]
            lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    prof = (doc.get("profile") or {}).get("summary")
    if prof:
        lines += ["", f"Worker profile during scenario 1 ({prof['samples']} GIL samples, "
                      "inclusive):", "", "| component | % of GIL samples |", "| --- | --- |"]
        lines += [f"| {name.strip()} | {share} |" for name, share in prof.get("components_pct", [])]
    return "\n".join(lines) + "\n"
