"""The tools find the system `make run` started from the same variables, and never another one."""

from __future__ import annotations

from pathlib import Path

import pytest

from libs.service.cli import SINK_FIRST_DELAY, SINK_INTERVAL, billing_sink_env
from libs.service.local import (
    NoDatabaseError,
    database_url,
    kafka_bootstrap,
    service_url,
    state_dir,
)
from services.publisher import tools
from services.publisher.config import PublisherSettings


def test_without_settings_the_tools_look_where_make_run_listens_by_default() -> None:
    """No variables: the embedded broker on 9092, the services on 8081-8084, state in .tollgate."""
    assert kafka_bootstrap({}) == "127.0.0.1:9092"
    assert [service_url(name, {}) for name in ("ingest", "limits", "reports", "publisher")] == [
        "http://127.0.0.1:8081",
        "http://127.0.0.1:8082",
        "http://127.0.0.1:8083",
        "http://127.0.0.1:8084",
    ]
    assert state_dir({}) == Path(".tollgate")


def test_the_port_variables_of_make_run_move_every_tool_with_it() -> None:
    """`TOLLGATE_*_PORT`, the embedded broker's port and the state directory are honoured."""
    env = {
        "TOLLGATE_EMBEDDED_KAFKA_PORT": "28092",
        "TOLLGATE_REPORTS_PORT": "28083",
        "TOLLGATE_HOST": "0.0.0.0",
        "TOLLGATE_STATE_DIR": "/tmp/elsewhere",
    }
    assert kafka_bootstrap(env) == "127.0.0.1:28092"
    assert service_url("reports", env) == "http://127.0.0.1:28083"
    assert service_url("ingest", {"TOLLGATE_HOST": "::1"}) == "http://[::1]:8081"
    assert state_dir(env) == Path("/tmp/elsewhere")


def test_explicit_addresses_win_over_ports() -> None:
    """`KAFKA_BOOTSTRAP_SERVERS` and `TOLLGATE_<NAME>_URL` name the system outright."""
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": "kafka-0:9092,kafka-1:9092",
        "TOLLGATE_EMBEDDED_KAFKA_PORT": "28092",
        "TOLLGATE_LIMITS_URL": "https://limits.example/",
        "TOLLGATE_LIMITS_PORT": "28082",
    }
    assert kafka_bootstrap(env) == "kafka-0:9092,kafka-1:9092"
    assert service_url("limits", env) == "https://limits.example"
    with pytest.raises(ValueError, match="unknown service 'billing'"):
        service_url("billing", env)


def test_a_database_url_is_used_as_it_is() -> None:
    """With `DATABASE_URL` set, the state directory is never looked at."""
    with database_url(
        {"DATABASE_URL": "postgresql://u@db/x", "TOLLGATE_STATE_DIR": "/nope"}
    ) as url:
        assert url == "postgresql://u@db/x"


def test_a_state_directory_without_a_database_is_a_clear_error_and_creates_nothing(
    tmp_path: Path,
) -> None:
    """No URL and no embedded database: the error names the directory and the fix; nothing is made."""
    state = tmp_path / "state"
    with (
        pytest.raises(NoDatabaseError, match=r"no embedded database in .*state/pgdata") as caught,
        database_url({"TOLLGATE_STATE_DIR": str(state)}),
    ):
        pytest.fail("the block must not run")
    assert "make run" in str(caught.value)
    assert "DATABASE_URL" in str(caught.value)
    assert not state.exists()


def test_publisher_tools_say_where_to_find_a_database_and_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`tollgate publisher status` without a database ends with one line naming what to set."""
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("TOLLGATE_STATE_DIR", str(tmp_path))
    assert tools.main(["status"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tollgate publisher: DATABASE_URL is not set")
    assert str(tmp_path / "pgdata") in err


def test_with_the_local_sink_the_publisher_sends_within_seconds() -> None:
    """The sink mode points the publisher at the sink with a first cycle after 2s, then every 30s."""
    env: dict[str, str] = {}
    billing_sink_env(env, "http://127.0.0.1:8090")
    assert env == {
        "BILLING_URL": "http://127.0.0.1:8090",
        "LICENSE_KEY": "dev-license-key",
        "PUBLISH_FIRST_DELAY": SINK_FIRST_DELAY,
        "PUBLISH_INTERVAL": SINK_INTERVAL,
    }
    settings = PublisherSettings.model_validate({**env, "DATABASE_URL": "postgresql://x/y"})
    assert settings.first_delay is not None
    assert settings.first_delay.total_seconds() == 2
    assert settings.interval.total_seconds() == 30


def test_the_sink_mode_keeps_what_the_environment_already_says() -> None:
    """A rhythm or billing URL set by hand is kept, so the production rhythm can be tried too."""
    env = {"PUBLISH_INTERVAL": "17m", "PUBLISH_FIRST_DELAY": "", "BILLING_URL": "http://b:1"}
    billing_sink_env(env, "http://127.0.0.1:8090")
    assert env["PUBLISH_INTERVAL"] == "17m"
    assert env["PUBLISH_FIRST_DELAY"] == ""
    assert env["BILLING_URL"] == "http://b:1"
