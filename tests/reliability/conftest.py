"""The fault run happens once for the module; the tests read what it found."""

from __future__ import annotations

import pytest

from tests.reliability.scenario import Outcome, run
from tests.support import Infra


@pytest.fixture(scope="module")
async def outcome(
    infra: Infra, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Outcome:
    """Run the simulator under faults once, compare every part, and print the counts."""
    result = await run(infra, tmp_path_factory.mktemp("reliability"))
    # Shown even when output is captured: these counts are what the suite promises.
    capture = request.config.pluginmanager.getplugin("capturemanager")
    reporter = request.config.pluginmanager.getplugin("terminalreporter")
    if capture is not None and reporter is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line("")
            reporter.write_line(result.report())
    return result
