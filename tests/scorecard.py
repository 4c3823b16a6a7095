"""The hardening scorecard: a pytest plugin that counts the bad inputs and faults the suite tries.

A test joins the scorecard with `@pytest.mark.fault` (every parametrized case counts once). A case
passes when the code under test did what it must: a clear error of cnnlab's own types, no
traceback, no hang (pytest-timeout turns a hang into a failure), and no file lost or left
half-written. At the very end of the run one line says how many were tried and how they went.
"""

from __future__ import annotations

import pytest

_outcomes: dict[str, str] = {}      # nodeid -> "passed" | "failed" | "skipped"


def pytest_configure(config):
    config.addinivalue_line("markers", "fault: a bad input or fault case, counted on the scorecard")


def pytest_runtest_logreport(report):
    if "fault" not in report.keywords:
        return
    if report.failed:
        _outcomes[report.nodeid] = "failed"             # a failure in any phase counts
    elif report.when == "call" and report.nodeid not in _outcomes:
        _outcomes[report.nodeid] = "skipped" if report.skipped else "passed"
    elif report.skipped and report.nodeid not in _outcomes:   # skipped in setup
        _outcomes[report.nodeid] = "skipped"


def scorecard_line() -> str | None:
    if not _outcomes:
        return None
    tried = [k for k, v in _outcomes.items() if v != "skipped"]
    failed = [k for k, v in _outcomes.items() if v == "failed"]
    skipped = len(_outcomes) - len(tried)
    per_file: dict[str, int] = {}
    for k in tried:             # "tests/test_reliability.py::..." -> "reliability"
        name = k.split("::")[0].rsplit("/", 1)[-1].removeprefix("test_").removesuffix(".py")
        per_file[name] = per_file.get(name, 0) + 1
    files = ", ".join(f"{n} {c}" for n, c in sorted(per_file.items()))
    extra = f" ({files}{f'; {skipped} skipped' if skipped else ''})"
    if not failed:
        return (f"scorecard: {len(tried)} bad inputs and faults tried{extra}; none crashed, hung "
                f"or lost data")
    return (f"scorecard: {len(tried)} bad inputs and faults tried{extra}; {len(failed)} FAILED "
            f"(crashed, hung or lost data): {', '.join(failed[:5])}{' …' if len(failed) > 5 else ''}")


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    # After the "N passed" line, so that it really is the last line `make test` prints.
    line = scorecard_line()
    tr = config.pluginmanager.get_plugin("terminalreporter")
    if line and tr is not None:
        tr.write_line(line, bold=True, red="FAILED" in line, green="FAILED" not in line)
