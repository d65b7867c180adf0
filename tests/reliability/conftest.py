"""The `reliability` fixture: each test records (fault injected, inputs tried, outcome).

Records carry the test's own pass/fail. With MEDSEGLLM_WRITE_RELIABILITY=1 the session writes them
to benchmarks/reliability.json and renders RELIABILITY.md (tests/reliability/report.py); otherwise
nothing is written, so ordinary test runs leave the tree untouched.
"""

from __future__ import annotations

import os
import time

import pytest

from tests.reliability.report import write_results

RECORDS: list[dict] = []
WRITE_ENV = "MEDSEGLLM_WRITE_RELIABILITY"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" or (report.when == "setup" and report.failed):
        item.reliability_report = report


@pytest.fixture
def reliability(request):
    """`reliability(fault, inputs, outcome)` adds one row for this test."""
    rows: list[dict] = []
    start = time.perf_counter()

    def record(fault: str, inputs: str, outcome: str) -> None:
        rows.append({"fault": fault, "inputs": inputs, "outcome": outcome})

    yield record
    report = getattr(request.node, "reliability_report", None)
    passed = bool(report is not None and report.passed)
    for row in rows:
        RECORDS.append({"test": request.node.nodeid, **row, "passed": passed,
                        "test_seconds": round(time.perf_counter() - start, 1)})


def pytest_sessionfinish(session, exitstatus):
    if os.environ.get(WRITE_ENV) == "1" and RECORDS:
        write_results(RECORDS)
