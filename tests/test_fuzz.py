"""Property-based fuzzing of the running gateway from openapi.yaml (schemathesis): no 5xx, and every response
has a documented status, content type and body schema.

Valid (positive) and invalid (negative) requests are generated per operation, a bounded number each, and
sent to the session's real gateway with an admin key. The count of cases tried is reported at the end.
"""

from __future__ import annotations

import pytest

from bench.fuzz import fuzz_gateway
from tests.gateway_fixtures import ADMIN_KEY, GatewayServer

pytestmark = pytest.mark.slow

# Per operation. The suite keeps this bound; `python -m bench.fuzz` runs the same fuzzing at depth (1,000+ cases).
EXAMPLES = {"positive": 30, "negative": 20}


def test_fuzzing_the_gateway_gives_no_5xx_and_only_documented_responses(
    gateway: GatewayServer, request: pytest.FixtureRequest
) -> None:
    tried, statuses, failures = fuzz_gateway(gateway.url, EXAMPLES, ADMIN_KEY)
    total = sum(tried.values())
    operations = len({key.rpartition(" (")[0] for key in tried})
    summary = ", ".join(f"{code}: {n}" for code, n in sorted(statuses.items()))
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"\nschemathesis: {total} cases over {operations} operations")
        reporter.write_line(f"schemathesis: responses by status: {summary}")
    assert not failures, "\n\n".join(failures)
    assert operations >= 14 and total >= 10 * operations
    assert not [code for code in statuses if code >= 500]
