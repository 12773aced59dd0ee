"""Services and tools declare themselves once, and the `tollgate` command finds them."""

from __future__ import annotations

import importlib.util
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from libs.service import cli
from libs.service.cli import Runner, available_services, find_tool
from libs.service.settings import CommonSettings
from libs.service.spec import (
    BUILTIN_TOOLS,
    DeclarationError,
    ServiceSpec,
    ToolSpec,
    discover_services,
    discover_tools,
    find_service,
    services,
    tools,
)
from libs.service.supervisor import SetupError
from services.ingest.config import IngestSettings
from services.limits.config import LimitsSettings
from services.publisher.config import PublisherSettings
from services.reports.config import ReportsSettings


def _package(root: Path, members: dict[str, str]) -> str:
    """A throwaway package under `root` whose sub-packages have the given `__init__` bodies."""
    name = f"pkg_{uuid.uuid4().hex[:10]}"
    (root / name).mkdir()
    (root / name / "__init__.py").write_text("")
    for member, body in members.items():
        (root / name / member).mkdir()
        (root / name / member / "__init__.py").write_text(body)
    return name


def _service(name: str, port: int, metrics_port: int, package: str) -> str:
    return (
        "from libs.service.spec import ServiceSpec\n"
        f"SERVICE = ServiceSpec({name!r}, default_port={port}, "
        f"default_metrics_port={metrics_port}, package={package!r})\n"
    )


def test_the_four_services_declare_the_ports_the_chart_and_readme_document() -> None:
    """Discovery finds ingest, limits, reports and publisher on 8081-8084, metrics on 9081-9084."""
    assert [(s.name, s.default_port, s.default_metrics_port) for s in services()] == [
        ("ingest", 8081, 9081),
        ("limits", 8082, 9082),
        ("reports", 8083, 9083),
        ("publisher", 8084, 9084),
    ]
    assert [s.name for s in available_services()] == [s.name for s in services()]
    for spec in services():
        assert importlib.util.find_spec(spec.main_module) is not None, spec.name
        assert spec.port_env == f"TOLLGATE_{spec.name.upper()}_PORT"
        assert spec.url_env == f"TOLLGATE_{spec.name.upper()}_URL"


@pytest.mark.parametrize(
    ("name", "settings"),
    [
        ("ingest", IngestSettings),
        ("limits", LimitsSettings),
        ("reports", ReportsSettings),
        ("publisher", PublisherSettings),
    ],
)
def test_each_services_settings_take_their_ports_from_its_declaration(
    name: str, settings: type[CommonSettings]
) -> None:
    """A service's settings read the port variables its declaration names, with its defaults."""
    spec = find_service(name)
    fields = settings.model_fields
    assert (fields["port"].alias, fields["port"].default) == (spec.port_env, spec.default_port)
    assert (fields["metrics_port"].alias, fields["metrics_port"].default) == (
        spec.metrics_port_env,
        spec.default_metrics_port,
    )


def test_every_tool_is_found_once_and_its_function_loads() -> None:
    """The built-in, service and development tools are all subcommands, each loading a callable."""
    names = [tool.name for tool in tools()]
    assert names == sorted(names)
    assert {"billing-sink", "events", "publisher", "simulate"} <= set(names)
    assert len(names) == len(set(names))
    for tool in tools():
        assert callable(tool.load()), tool.name
    sink = find_tool("billing-sink")
    assert sink is not None
    assert (sink.port_env, sink.default_port) == ("TOLLGATE_BILLING_SINK_PORT", 8090)
    assert find_tool("nope") is None


def test_discovery_reads_each_sub_package_and_skips_those_without_a_declaration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Services come back ordered by port; a package that declares nothing is not a service."""
    monkeypatch.syspath_prepend(str(tmp_path))
    root = f"pkg_{uuid.uuid4().hex[:10]}"
    (tmp_path / root).mkdir()
    (tmp_path / root / "__init__.py").write_text("")
    for member, body in {
        "zeta": _service("zeta", 7001, 7101, f"{root}.zeta"),
        "alpha": _service("alpha", 7002, 7102, f"{root}.alpha"),
        "helpers": '"""Shared code, not a service."""\n',
    }.items():
        (tmp_path / root / member).mkdir()
        (tmp_path / root / member / "__init__.py").write_text(body)
    found = discover_services(root)
    assert [(s.name, s.package) for s in found] == [
        ("zeta", f"{root}.zeta"),
        ("alpha", f"{root}.alpha"),
    ]
    assert discover_services(f"absent_{uuid.uuid4().hex[:8]}") == ()


def test_two_services_on_one_port_are_refused_with_the_port(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A port claimed twice is a declaration error naming that port."""
    monkeypatch.syspath_prepend(str(tmp_path))
    root = _package(tmp_path, {})
    for member, metrics in (("one", 7201), ("two", 7202)):
        (tmp_path / root / member).mkdir()
        (tmp_path / root / member / "__init__.py").write_text(
            _service(member, 7200, metrics, f"{root}.{member}")
        )
    with pytest.raises(DeclarationError, match="same port: 7200"):
        discover_services(root)


def test_a_declaration_in_the_wrong_package_or_of_the_wrong_type_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`SERVICE` must be a ServiceSpec naming the package that declares it."""
    monkeypatch.syspath_prepend(str(tmp_path))
    wrong_type = _package(tmp_path, {"odd": "SERVICE = 'ingest'\n"})
    with pytest.raises(DeclarationError, match=r"odd\.SERVICE is not a ServiceSpec"):
        discover_services(wrong_type)
    elsewhere = _package(tmp_path, {"copy": _service("copy", 7301, 7302, "services.ingest")})
    with pytest.raises(DeclarationError, match="declare it in its own"):
        discover_services(elsewhere)


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (lambda: ServiceSpec("Ingest", default_port=1, default_metrics_port=2), "lower-case"),
        (lambda: ServiceSpec("x", default_port=0, default_metrics_port=2), "port 0"),
        (lambda: ServiceSpec("x", default_port=70000, default_metrics_port=2), "port 70000"),
        (lambda: ServiceSpec("x", default_port=5, default_metrics_port=5), "must differ"),
        (lambda: ToolSpec("Bad Name", "m:f", "s"), "lower-case words"),
        (lambda: ToolSpec("ok", "no-colon", "s"), "not module:function"),
        (lambda: ToolSpec("ok", "m:f", "s", port_env="X"), "both port_env and default_port"),
        (lambda: ToolSpec("ok", "m:f", "s", port_env="X", default_port=-1), "port -1"),
    ],
)
def test_declarations_that_cannot_work_are_refused_when_made(
    make: Callable[[], object], problem: str
) -> None:
    """Bad names, ports outside 1-65535, shared ports and malformed entries fail at once."""
    with pytest.raises(DeclarationError, match=problem):
        make()


def test_tools_with_one_name_are_refused_and_a_missing_tools_package_is_no_error() -> None:
    """Two tools cannot share a subcommand; without `tools/` only the rest are found."""
    clash = ServiceSpec(
        "clash", default_port=7401, default_metrics_port=7402, tools=(BUILTIN_TOOLS[0],)
    )
    with pytest.raises(DeclarationError, match="same tool name: events"):
        discover_tools([clash], builtin=BUILTIN_TOOLS)
    absent = f"absent_{uuid.uuid4().hex[:8]}"
    found = discover_tools(services(), absent, builtin=BUILTIN_TOOLS)
    assert [t.name for t in found] == ["events", "publisher"]


def test_a_tool_whose_module_is_not_in_the_build_says_so(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`tollgate <tool>` for a declared tool whose module is missing exits 2 with one clear line."""
    ghost = ToolSpec("ghost", f"absent_{uuid.uuid4().hex[:8]}.tool:main", "not installed")
    monkeypatch.setattr(cli, "tools", lambda: (*tools(), ghost))
    # Logging stays as the session set it up (a logger bound to capsys' stream would outlive it).
    monkeypatch.setattr(cli, "configure_logging", lambda *_: None)
    assert cli.main(["ghost"]) == 2
    assert "tollgate: ghost is not available in this build" in capsys.readouterr().err


def test_run_with_the_billing_sink_in_a_build_without_it_names_the_problem(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`--with-billing-sink` without the tools package is a setup error, not a crash."""
    monkeypatch.setattr(cli, "tools", lambda: BUILTIN_TOOLS)
    runner = Runner(state_dir=tmp_path, with_billing_sink=True)
    with pytest.raises(SetupError, match="billing sink is not part of this build"):
        runner._claims({"TOLLGATE_HOST": "127.0.0.1"}, available_services())
