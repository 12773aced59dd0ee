"""Deterministic usage for N users over D days: the directory, then a day at a time.

Everything is drawn from random generators seeded by the simulation seed and the
user, day or project the draw is about, so the same seed, size and end time always give
the same events with the same ids, in the same order, whatever is asked for first. Ids
start with `sim-<seed>-`, so simulations with different seeds never collide.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from typing import Final

from libs.events.models import (
    ActivitySession,
    ActivitySessionRecorded,
    ApiUsage,
    ApiUsageRecorded,
    ChatUsage,
    ChatUsageRecorded,
    DirectoryGroup,
    DirectoryProject,
    DirectoryTeam,
    DirectoryUser,
    Envelope,
    GroupUpdated,
    ProjectUpdated,
    StorageSample,
    StorageSampled,
    TeamUpdated,
    UserUpdated,
    WorkspaceBuild,
    WorkspaceBuilt,
)
from libs.events.pricing import ModelPrice
from tools.simulator.catalog import (
    APPS,
    FIRST_NAMES,
    IDE_DETAILS,
    LAST_NAMES,
    MODELS,
    PRICES,
    PROVIDER_BILLED_MODEL,
    TEAM_NAMES,
    TEMPLATES,
    TUNNEL_DETAILS,
)

__all__ = ["SimUser", "Simulation", "SimulationConfig", "window"]

DAY: Final = timedelta(days=1)
_MODEL_NAMES: Final = tuple(m for m, _, _ in MODELS)
_MODEL_WEIGHTS: Final = tuple(w for _, _, w in MODELS)
_PROVIDERS: Final = {m: p for m, p, _ in MODELS}
# Title generation uses a small, cheap model, as chat front-ends do.
_TITLE_MODEL: Final = "gpt-4o-mini"
# Models that report reasoning tokens (part of their output tokens) on some messages.
_REASONING_MODELS: Final = frozenset({"o3", "claude-sonnet-4", "gemini-2.5-pro"})
#: The longest generation step an agent chat message reports.
_MAX_STEP_MS: Final = 15 * 60_000


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


@dataclass(frozen=True, slots=True)
class SimulationConfig:
    """What to simulate: who, how long, until when, and how busy."""

    seed: int
    users: int = 50
    days: int = 30
    end: datetime = field(default_factory=_now)
    teams: int = 0
    intensity: float = 1.0

    def __post_init__(self) -> None:
        if self.users < 1 or self.days < 1:
            raise ValueError("a simulation needs at least one user and one day")
        if self.end.tzinfo is None:
            raise ValueError("end must be timezone-aware")
        if self.intensity <= 0:
            raise ValueError("intensity must be positive")
        # Millisecond resolution: the log, PostgreSQL and JSON all keep it exactly.
        end = self.end.astimezone(UTC)
        object.__setattr__(self, "end", end.replace(microsecond=end.microsecond // 1000 * 1000))

    @property
    def prefix(self) -> str:
        """The prefix of every id this simulation makes."""
        return f"sim-{self.seed}"

    @property
    def org_id(self) -> str:
        """The organisation every simulated user belongs to."""
        return f"{self.prefix}-org"

    @property
    def team_count(self) -> int:
        """Teams: as configured, or one per eight users (at least one)."""
        return self.teams or max(1, min(len(TEAM_NAMES) * 4, math.ceil(self.users / 8)))

    def user_id(self, index: int) -> str:
        """The id of user `index` (1-based): `sim-<seed>-u0001`."""
        return f"{self.prefix}-u{index:04d}"


def window(config: SimulationConfig) -> tuple[datetime, datetime]:
    """From midnight UTC of the first simulated day to the configured end."""
    first = config.end.date() - timedelta(days=config.days - 1)
    return datetime.combine(first, time(), UTC), config.end


@dataclass(frozen=True, slots=True)
class SimUser:
    """A simulated person and the habits their usage is drawn from."""

    index: int
    id: str
    username: str
    name: str
    email: str
    team: int
    groups: tuple[str, ...]
    roles: tuple[str, ...]
    created_at: datetime
    licensed: bool
    suspended: bool
    activity: float
    weekend_worker: bool
    night_owl: bool
    runs_agents: bool
    ide: str
    model_weights: tuple[float, ...]
    workspaces: tuple[str, ...]


class Simulation:
    """The directory and the usage of one seeded simulation, as event models."""

    def __init__(self, config: SimulationConfig) -> None:
        self.config = config
        self.prices: dict[str, ModelPrice] = dict(PRICES)
        self.start, self.end = window(config)
        self.users = [self._user(i) for i in range(1, config.users + 1)]
        self.teams = self._teams()
        self.projects = self._projects()
        self.groups = self._groups()

    # ----- the directory -------------------------------------------------------------------

    def rng(self, *parts: object) -> random.Random:
        """A generator seeded by the simulation seed and `parts` (a user, a day, a project)."""
        # String seeds are hashed with SHA-512: stable across runs and Python versions.
        return random.Random("/".join(map(str, (self.config.seed, *parts))))  # noqa: S311

    def _user(self, index: int) -> SimUser:
        cfg = self.config
        rng = self.rng("user", index)
        first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
        username = f"{first.lower()}.{last.lower()}{index}"
        roles = ["member"]
        if rng.random() < 0.1:
            roles.append("template-admin")
        if rng.random() < 0.05:
            roles.append("auditor")
        # One owner and one user admin, who get the admin version of budget notifications.
        roles += {1: ["owner"], 2: ["user-admin"]}.get(index, [])
        weights = tuple(w * rng.uniform(0.2, 2.0) for w in _MODEL_WEIGHTS)
        team = (index - 1) % cfg.team_count
        groups = ["engineering"] if rng.random() < 0.85 else ["contractors"]
        if rng.random() < 0.25:
            groups.append("ml")
        return SimUser(
            index=index,
            id=cfg.user_id(index),
            username=username,
            name=f"{first} {last}",
            email=f"{username}.{cfg.prefix}@example.com",
            team=team,
            groups=tuple(groups),
            roles=tuple(roles),
            created_at=self.start
            - timedelta(days=rng.randint(10, 900), seconds=rng.randint(0, 86_399)),
            licensed=rng.random() < 0.95,
            suspended=rng.random() < 0.03,
            activity=min(4.0, max(0.1, rng.lognormvariate(0.0, 0.6))),
            weekend_worker=rng.random() < 0.15,
            night_owl=rng.random() < 0.2,
            runs_agents=rng.random() < 0.35,
            ide=rng.choice(IDE_DETAILS),
            model_weights=weights,
            workspaces=tuple(f"{cfg.prefix}-u{index:04d}-ws{k}" for k in range(rng.randint(1, 3))),
        )

    def _teams(self) -> list[tuple[str, str, tuple[str, ...]]]:
        cfg = self.config
        teams = []
        for t in range(cfg.team_count):
            base = TEAM_NAMES[t % len(TEAM_NAMES)]
            name = base if t < len(TEAM_NAMES) else f"{base}-{t // len(TEAM_NAMES) + 1}"
            members = tuple(u.id for u in self.users if u.team == t)
            teams.append((f"{cfg.prefix}-t{t + 1:03d}", f"{name} ({cfg.prefix})", members))
        return teams

    def _projects(self) -> list[tuple[str, str, str]]:
        projects = []
        for t, (team_id, team_name, _) in enumerate(self.teams):
            rng = self.rng("team", t)
            for k in range(rng.randint(1, 3)):
                project_id = f"{team_id}-p{k + 1}"
                projects.append((project_id, team_id, f"{team_name.split(' ')[0]}-project-{k + 1}"))
        return projects

    def _groups(self) -> list[tuple[str, str, tuple[str, ...]]]:
        prefix = self.config.prefix
        return [
            (
                f"{prefix}-g-{name}",
                f"{name} ({prefix})",
                tuple(u.id for u in self.users if name in u.groups),
            )
            for name in ("engineering", "contractors", "ml")
        ]

    def directory_events(self) -> list[Envelope]:
        """Users, groups, teams and projects, dated an hour before the first usage."""
        cfg = self.config
        at = self.start - timedelta(hours=1)
        events: list[Envelope] = [
            UserUpdated(
                id=f"{u.id}-profile",
                occurred_at=at,
                org_id=cfg.org_id,
                user_id=u.id,
                data=DirectoryUser(
                    username=u.username,
                    name=u.name,
                    email=u.email,
                    roles=u.roles,
                    avatar_hash=f"{u.index:032x}",
                    created_at=u.created_at,
                    suspended=u.suspended,
                    licensed=u.licensed,
                ),
            )
            for u in self.users
        ]
        for group_id, name, members in self.groups:
            events.append(
                GroupUpdated(
                    id=f"{group_id}-v1",
                    occurred_at=at,
                    org_id=cfg.org_id,
                    data=DirectoryGroup(group_id=group_id, name=name, member_ids=members),
                )
            )
        for team_id, name, members in self.teams:
            events.append(
                TeamUpdated(
                    id=f"{team_id}-v1",
                    occurred_at=at,
                    org_id=cfg.org_id,
                    data=DirectoryTeam(team_id=team_id, name=name, member_ids=members),
                )
            )
        for project_id, team_id, name in self.projects:
            events.append(
                ProjectUpdated(
                    id=f"{project_id}-v1",
                    occurred_at=at,
                    org_id=cfg.org_id,
                    data=DirectoryProject(project_id=project_id, team_id=team_id, name=name),
                )
            )
        return events

    # ----- usage ---------------------------------------------------------------------------

    def events(self) -> Iterator[Envelope]:
        """Every event: the directory first, then each day's usage in time order."""
        yield from self.directory_events()
        for day in range(self.config.days):
            yield from self.day_events(day)

    def day_events(self, day: int) -> list[Envelope]:
        """The usage of simulated day `day` (0 is the first), sorted by time then id."""
        day_start = self.start + day * DAY
        events: list[Envelope] = []
        for user in self.users:
            events.extend(_UserDay(self, user, day, day_start).events())
        for n, (project_id, _, _) in enumerate(self.projects):
            rng = self.rng("storage", project_id, day)
            if rng.random() < 0.8:
                at = self.clamp(day_start + timedelta(seconds=rng.randint(0, 86_399)))
                if at is None:
                    continue
                growth = 1 + day * 0.01 * (1 + n % 3)
                events.append(
                    StorageSampled(
                        id=f"{project_id}-s{day:04d}",
                        occurred_at=at,
                        org_id=self.config.org_id,
                        data=StorageSample(
                            project_id=project_id,
                            size_mb=round(rng.uniform(50, 5_000) * growth, 2),
                            experiment_count=rng.randint(1, 40) + day,
                        ),
                    )
                )
        events.sort(key=lambda e: (e.occurred_at, e.id))
        return events

    def clamp(self, at: datetime) -> datetime | None:
        """`at`, or None when it falls after the end (nothing is ever in the future)."""
        return at if at <= self.end else None


class _UserDay:
    """Draws one user's events for one day."""

    def __init__(self, sim: Simulation, user: SimUser, day: int, day_start: datetime) -> None:
        self.sim = sim
        self.user = user
        self.day = day
        self.day_start = day_start
        self.rng = sim.rng("day", user.index, day)
        self.n = 0
        self.out: list[Envelope] = []

    def _id(self, kind: str) -> str:
        self.n += 1
        return f"{self.user.id}-d{self.day:04d}-{kind}{self.n:04d}"

    def _at(self, seconds: float) -> datetime | None:
        at = self.day_start + timedelta(milliseconds=round(seconds * 1000))
        return self.sim.clamp(at)

    def events(self) -> list[Envelope]:
        user, rng = self.user, self.rng
        weekday = self.day_start.date().weekday()
        works = (
            rng.random() < (0.92 if weekday < 5 else (0.6 if user.weekend_worker else 0.08))
            and not user.suspended
        )
        if not works:
            return self.out
        begin = rng.uniform(7.0, 10.5) * 3600
        span = rng.uniform(5.0, 10.0) * 3600
        intensity = user.activity * self.sim.config.intensity

        def when() -> float:
            return begin + rng.random() * span

        for _ in range(1 + (rng.random() < 0.4)):
            self._session("login", None, when(), 0)
        for _ in range(_poisson(rng, 1.6 * min(intensity, 2.0)) or 1):
            self._session("ide", user.ide, when(), _minutes(rng, 45, 10, 240))
        for _ in range(_poisson(rng, 0.8)):
            self._session("tunnel", rng.choice(TUNNEL_DETAILS), when(), _minutes(rng, 30, 5, 180))
        for _ in range(_poisson(rng, 0.6)):
            self._session("app", rng.choice(APPS), when(), _minutes(rng, 15, 1, 90))
        if rng.random() < 0.3:
            self._session("web_terminal", None, when(), _minutes(rng, 8, 1, 45))
        if user.night_owl and rng.random() < 0.5:
            # Late sessions run past midnight: they belong to two days' buckets.
            start = rng.uniform(21.5, 23.9) * 3600
            self._session("ide", user.ide, start, _minutes(rng, 90, 20, 240))
        roots: list[str] = []
        for c in range(_poisson(rng, 3.0 * intensity)):
            self._chat(c, when(), roots)
        for _ in range(rng.choices((0, 1, 2), (0.5, 0.35, 0.15))[0]):
            self._build(when())
        if rng.random() < 0.9:
            self._api("ui", rng.randint(1, 40), when())
        if rng.random() < 0.4:
            self._api("sdk", rng.randint(1, 300), when())
        return self.out

    def _session(self, category: str, detail: str | None, start: float, minutes: float) -> None:
        at = self._at(start)
        if at is None:
            return
        duration_ms = round(minutes * 60_000)
        # A session never runs past the end of the simulation.
        end_ms = int((self.sim.end - at).total_seconds() * 1000)
        duration_ms = max(0, min(duration_ms, end_ms))
        workspace = (
            self.rng.choice(self.user.workspaces) if category in {"ide", "tunnel", "app"} else None
        )
        self.out.append(
            ActivitySessionRecorded(
                id=self._id("s"),
                occurred_at=at,
                org_id=self.sim.config.org_id,
                user_id=self.user.id,
                data=ActivitySession(
                    category=category,
                    detail=detail,
                    duration_ms=duration_ms,
                    count=1,
                    workspace_id=workspace,
                ),
            )
        )

    def _chat(self, c: int, start: float, roots: list[str]) -> None:
        rng, user = self.rng, self.user
        chat_id = f"{self.user.id}-d{self.day:04d}-chat{c + 1}"
        root = rng.choice(roots) if roots and rng.random() < 0.2 else None
        if root is None:
            roots.append(chat_id)
        provider_billed = rng.random() < 0.03
        model = (
            PROVIDER_BILLED_MODEL
            if provider_billed
            else rng.choices(_MODEL_NAMES, user.model_weights)[0]
        )
        # Drawn apart from the day's generator, so the rest of the day is the same either way.
        agent = self.sim.rng("agent", chat_id).random() < (0.6 if user.runs_agents else 0.15)
        t = start
        if root is None:
            self._message(chat_id, None, _TITLE_MODEL, t, purpose="title", small=True)
        for _ in range(rng.randint(1, 10)):
            t += rng.uniform(10, 300)
            self._message(chat_id, root, model, t, purpose="chat", small=False, agent=agent)

    def _message(
        self,
        chat_id: str,
        root: str | None,
        model: str,
        at_s: float,
        *,
        purpose: str,
        small: bool,
        agent: bool = False,
    ) -> None:
        rng = self.rng
        at = self._at(at_s)
        if at is None:
            return
        if small:
            inp, out, read, write = rng.randint(50, 400), rng.randint(5, 30), 0, 0
        else:
            inp = int(min(200_000, max(50, rng.lognormvariate(math.log(4_000), 0.8))))
            out = int(min(32_000, max(1, rng.lognormvariate(math.log(600), 0.9))))
            read = int(inp * rng.uniform(0.5, 4.0)) if rng.random() < 0.6 else 0
            write = int(inp * rng.uniform(0.0, 0.5)) if rng.random() < 0.3 else 0
        cost = rng.randint(10, 5_000) if model == PROVIDER_BILLED_MODEL else None
        message_id = self._id("m")
        # Reasoning and Agent Time come from a generator of their own (keyed by the message),
        # so adding them changed no other draw of the simulation.
        extra = self.sim.rng("message", message_id)
        reasoning = (
            int(out * extra.uniform(0.1, 0.8))
            if purpose == "chat" and model in _REASONING_MODELS and extra.random() < 0.5
            else None
        )
        runtime = (
            int(min(_MAX_STEP_MS, max(200, extra.lognormvariate(math.log(20_000), 0.9))))
            if agent and purpose == "chat"
            else None
        )
        self.out.append(
            ChatUsageRecorded(
                id=message_id,
                occurred_at=at,
                org_id=self.sim.config.org_id,
                user_id=self.user.id,
                data=ChatUsage(
                    chat_id=chat_id,
                    root_chat_id=root,
                    message_id=message_id,
                    model=model,
                    provider=_PROVIDERS.get(model, "self-hosted"),
                    input_tokens=inp,
                    output_tokens=out,
                    cache_read_tokens=read,
                    cache_write_tokens=write,
                    cost_micros=cost,
                    purpose=purpose,
                    reasoning_tokens=reasoning,
                    runtime_ms=runtime,
                ),
            )
        )

    def _build(self, start: float) -> None:
        at = self._at(start)
        if at is None:
            return
        rng = self.rng
        agent = self.user.runs_agents and rng.random() < 0.6
        build_id = self._id("b")
        self.out.append(
            WorkspaceBuilt(
                id=build_id,
                occurred_at=at,
                org_id=self.sim.config.org_id,
                user_id=self.user.id,
                data=WorkspaceBuild(
                    workspace_id=rng.choice(self.user.workspaces),
                    build_id=build_id,
                    template="agent-sandbox" if agent else rng.choice(TEMPLATES[:-1]),
                    agent_managed=agent,
                    task_id=f"{build_id}-task" if agent else None,
                ),
            )
        )

    def _api(self, client: str, count: int, start: float) -> None:
        at = self._at(start)
        if at is None:
            return
        self.out.append(
            ApiUsageRecorded(
                id=self._id("a"),
                occurred_at=at,
                org_id=self.sim.config.org_id,
                user_id=self.user.id,
                data=ApiUsage(client=client, count=count),
            )
        )


def _poisson(rng: random.Random, mean: float) -> int:
    """Knuth's method: small means only, which is all the simulator needs."""
    limit, k, p = math.exp(-mean), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


def _minutes(rng: random.Random, typical: float, low: float, high: float) -> float:
    return min(high, max(low, rng.lognormvariate(math.log(typical), 0.7)))
