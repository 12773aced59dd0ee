"""What a service or a tool declares about itself, and how the `tollgate` command finds them.

Each service package says what it is in one place, its `__init__.py`:

    SERVICE = ServiceSpec("ingest", default_port=8081, default_metrics_port=9081)

with the tools it brings (`tools=(ToolSpec(...),)`), and the development tools package
declares its tools as `TOOLS`. The command imports nothing of them by name: it walks the
`services` package for `SERVICE` declarations and reads `tools.TOOLS` when that package is
installed (the production image leaves it out), so a new service or tool is found as soon as
it declares itself, and `libs` never depends on a service.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache
from types import ModuleType
from typing import Final

__all__ = [
    "BUILTIN_TOOLS",
    "SERVICES_PACKAGE",
    "TOOLS_PACKAGE",
    "DeclarationError",
    "ServiceSpec",
    "ToolSpec",
    "discover_services",
    "discover_tools",
    "find_service",
    "services",
    "tools",
]

#: Where service packages live (`services/<name>/__init__.py` declares `SERVICE`).
SERVICES_PACKAGE: Final = "services"
#: The development tools package (`tools/__init__.py` declares `TOOLS`).
TOOLS_PACKAGE: Final = "tools"

_NAME = re.compile(r"[a-z][a-z0-9]*(?:-[a-z0-9]+)*")
_ENTRY = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")


class DeclarationError(ValueError):
    """A service or tool declaration that cannot work: a bad name, port or entry point, or two
    declarations that claim the same name or port."""


@dataclass(frozen=True)
class ToolSpec:
    """A `tollgate <name>` subcommand: `entry` is `module:function`, called with the remaining
    arguments, returning the exit status.

    A tool that serves (the local billing sink) names the variable of its port and the port it
    takes by default, so `tollgate run` can check that port and start it on request.
    """

    name: str
    entry: str
    summary: str
    port_env: str | None = None
    default_port: int | None = None

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise DeclarationError(f"tool name {self.name!r}: use lower-case words joined by -")
        if not _ENTRY.fullmatch(self.entry):
            raise DeclarationError(f"tool {self.name}: entry {self.entry!r} is not module:function")
        if (self.port_env is None) != (self.default_port is None):
            raise DeclarationError(f"tool {self.name}: give both port_env and default_port")
        if self.default_port is not None:
            _check_port(f"tool {self.name}", self.default_port)

    @property
    def module(self) -> str:
        """The module that holds the tool's function."""
        return self.entry.partition(":")[0]

    def load(self) -> Callable[[list[str]], int]:
        """Import the tool's function (`ModuleNotFoundError` when it is not in this build)."""
        module_name, _, func_name = self.entry.partition(":")
        func: Callable[[list[str]], int] = getattr(importlib.import_module(module_name), func_name)
        return func


@dataclass(frozen=True)
class ServiceSpec:
    """A service: its name, where it listens by default and the tools it brings.

    The variables follow from the name: `TOLLGATE_<NAME>_PORT`, `TOLLGATE_<NAME>_METRICS_PORT`
    and `TOLLGATE_<NAME>_URL` (where the other services and the tools reach it). `package` is
    the Python package (`services.<name>`); `tollgate serve <name>` runs its `__main__`.
    """

    name: str
    default_port: int
    default_metrics_port: int
    summary: str = ""
    tools: tuple[ToolSpec, ...] = ()
    package: str = ""

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z][a-z0-9]*", self.name):
            raise DeclarationError(f"service name {self.name!r}: use one lower-case word")
        _check_port(f"service {self.name}", self.default_port)
        _check_port(f"service {self.name} metrics", self.default_metrics_port)
        if self.default_port == self.default_metrics_port:
            raise DeclarationError(f"service {self.name}: the API and metrics ports must differ")
        if not self.package:
            object.__setattr__(self, "package", f"{SERVICES_PACKAGE}.{self.name}")

    @property
    def port_env(self) -> str:
        """The variable that sets the API port."""
        return f"TOLLGATE_{self.name.upper()}_PORT"

    @property
    def metrics_port_env(self) -> str:
        """The variable that sets the metrics port."""
        return f"TOLLGATE_{self.name.upper()}_METRICS_PORT"

    @property
    def url_env(self) -> str:
        """The variable that tells other services and the tools where this one answers."""
        return f"TOLLGATE_{self.name.upper()}_URL"

    @property
    def main_module(self) -> str:
        """The module `tollgate serve <name>` runs."""
        return f"{self.package}.__main__"


def _check_port(what: str, port: int) -> None:
    if not 1 <= port <= 65535:
        raise DeclarationError(f"{what}: port {port} is not between 1 and 65535")


def _import(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name == name:
            return None
        raise


def discover_services(package: str = SERVICES_PACKAGE) -> tuple[ServiceSpec, ...]:
    """Every `SERVICE` declared by a sub-package of `package`, in the order of their ports.

    Raises `DeclarationError` when two services share a name or a port, or when a package
    declares something other than a `ServiceSpec`.
    """
    root = _import(package)
    if root is None or not hasattr(root, "__path__"):
        return ()
    found: list[ServiceSpec] = []
    for info in pkgutil.iter_modules(root.__path__, prefix=f"{package}."):
        if not info.ispkg:
            continue
        declared = getattr(importlib.import_module(info.name), "SERVICE", None)
        if declared is None:
            continue
        if not isinstance(declared, ServiceSpec):
            raise DeclarationError(f"{info.name}.SERVICE is not a ServiceSpec")
        if declared.package != info.name:
            raise DeclarationError(
                f"{info.name}.SERVICE names package {declared.package!r}; declare it in its own"
            )
        found.append(declared)
    found.sort(key=lambda s: (s.default_port, s.name))
    _unique("service name", [s.name for s in found])
    _unique("port", [p for s in found for p in (s.default_port, s.default_metrics_port)])
    return tuple(found)


def discover_tools(
    services: Iterable[ServiceSpec], package: str = TOOLS_PACKAGE, *, builtin: Iterable[ToolSpec]
) -> tuple[ToolSpec, ...]:
    """The `builtin` tools, each service's tools and `package.TOOLS` (when installed), by name.

    Raises `DeclarationError` when two tools share a name.
    """
    found = [*builtin, *(tool for spec in services for tool in spec.tools)]
    root = _import(package)
    if root is not None:
        declared = getattr(root, "TOOLS", ())
        if not all(isinstance(tool, ToolSpec) for tool in declared):
            raise DeclarationError(f"{package}.TOOLS holds something other than ToolSpec")
        found += declared
    _unique("tool name", [tool.name for tool in found])
    return tuple(sorted(found, key=lambda tool: tool.name))


def _unique(what: str, values: list[str] | list[int]) -> None:
    seen: set[str | int] = set()
    for value in values:
        if value in seen:
            raise DeclarationError(f"two declarations claim the same {what}: {value}")
        seen.add(value)


@cache
def services() -> tuple[ServiceSpec, ...]:
    """The services of this build (discovered once per process)."""
    return discover_services()


def find_service(name: str) -> ServiceSpec:
    """The service called `name`; `ValueError` naming the known ones when there is none."""
    for spec in services():
        if spec.name == name:
            return spec
    known = ", ".join(s.name for s in services()) or "none"
    raise ValueError(f"unknown service {name!r} (known: {known})")


#: Tools of `libs` itself: operator tools that work against any deployment.
BUILTIN_TOOLS: Final = (
    ToolSpec(
        "events",
        "libs.service.events_tool:main",
        "the usage log, decoded and filtered: tail, follow",
    ),
)


@cache
def tools() -> tuple[ToolSpec, ...]:
    """Every tool of this build: the built-in ones, the services' and the development tools."""
    return discover_tools(services(), builtin=BUILTIN_TOOLS)
