"""Prints the counts table of every fault scenario at the end of the run."""

from __future__ import annotations

from .harness import REPORTS, format_reports


def pytest_terminal_summary(terminalreporter) -> None:  # noqa: ANN001
    if REPORTS:
        terminalreporter.section("fault scenarios: counts")
        terminalreporter.write_line(format_reports(REPORTS))
