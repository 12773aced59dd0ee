"""The event catalogue: one envelope model per versioned type on the usage log.

Every service reads and writes these models, so the validation rules live
here once. Models are frozen and reject unknown fields; numbers, booleans
and times are validated strictly so a producer's type mistake is rejected
at the front door instead of being silently coerced into somebody's bill.
"""

from abc import abstractmethod
from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    StringConstraints,
    TypeAdapter,
    ValidationInfo,
    field_validator,
    model_serializer,
)
from pydantic_core import PydanticCustomError

from libs.events.bounds import (
    MAX_DURATION_MS,
    MAX_EVENT_COST_MICROS,
    MAX_EVENT_COUNT,
    MAX_EVENT_TOKENS,
    MAX_JSON_INT,
    MAX_SIZE_MB,
)
from libs.events.vocabulary import ActivityCategory

__all__ = [
    "EVENT_ADAPTER",
    "MAX_INT",
    "MAX_RUNTIME_MS",
    "ActivitySession",
    "ActivitySessionRecorded",
    "ApiUsage",
    "ApiUsageRecorded",
    "ChatUsage",
    "ChatUsageRecorded",
    "DirectoryGroup",
    "DirectoryProject",
    "DirectoryTeam",
    "DirectoryUser",
    "Envelope",
    "Event",
    "EventData",
    "GroupUpdated",
    "ProjectUpdated",
    "StorageSample",
    "StorageSampled",
    "TeamUpdated",
    "UserScopedEnvelope",
    "UserUpdated",
    "WorkspaceBuild",
    "WorkspaceBuilt",
    "identity_of",
]

# Integers stay within JSON's exactly representable range; the tighter per-field caps come
# from `libs.events.bounds`, which derives them so that every consumer's sums stay exact.
MAX_INT = MAX_JSON_INT

Id = Annotated[str, StringConstraints(strict=True, min_length=1, max_length=128)]
Name = Annotated[str, StringConstraints(strict=True, min_length=1, max_length=256)]
# Directory display names are optional upstream and often empty.
DisplayName = Annotated[str, StringConstraints(strict=True, max_length=256)]
Email = Annotated[str, StringConstraints(strict=True, min_length=3, max_length=320)]
Tokens = Annotated[int, Field(strict=True, ge=0, le=MAX_EVENT_TOKENS)]
Count = Annotated[int, Field(strict=True, ge=0, le=MAX_EVENT_COUNT)]
PositiveCount = Annotated[int, Field(strict=True, ge=1, le=MAX_EVENT_COUNT)]
DurationMs = Annotated[int, Field(strict=True, ge=0, le=MAX_DURATION_MS)]
Micros = Annotated[int, Field(strict=True, ge=0, le=MAX_EVENT_COST_MICROS)]
Flag = Annotated[bool, Field(strict=True)]
Megabytes = Annotated[float, Field(strict=True, ge=0, le=MAX_SIZE_MB, allow_inf_nan=False)]
# Membership lists are replaced whole, so one event carries every member.
MemberIds = Annotated[tuple[Id, ...], Field(max_length=100_000)]
#: The longest generation one chat usage event may report: a day. Agent Time sums these per
#: hour; at this cap even ten million events in one hour stay below MAX_INT.
MAX_RUNTIME_MS = 86_400_000
RuntimeMs = Annotated[int, Field(strict=True, ge=0, le=MAX_RUNTIME_MS)]


def _reject_non_text_time(value: object) -> object:
    # Lax datetime parsing would read a number, or a string of digits, as a
    # Unix timestamp; on the wire a time is always an ISO 8601 string.
    if isinstance(value, datetime) or (isinstance(value, str) and value[4:5] == "-"):
        return value
    raise PydanticCustomError(
        "datetime_type",
        "Input should be an ISO 8601 date-time string with a timezone, e.g. 2026-11-02T10:15:00Z",
    )


def _as_utc(value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise PydanticCustomError(
            "timezone_aware",
            "Input should include a timezone, e.g. 2026-11-02T10:15:00Z",
        )
    return value.astimezone(UTC)


UtcDatetime = Annotated[datetime, BeforeValidator(_reject_non_text_time), AfterValidator(_as_utc)]


def identity_of(type_name: str, subject: str, event_id: str) -> str:
    """`Envelope.identity` from its parts (for a store that kept them apart, like an archive)."""
    return f"{type_name}\x1f{subject}\x1f{event_id}"


class EventData(BaseModel):
    """Base of every `data` payload: immutable, unknown fields rejected."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class ChatUsage(EventData):
    """Tokens one chat message used; `cost_micros` is fixed when the event is priced.

    `cost_micros` is the cost that counts. Ingest sets it from the deployment's price table
    when the model has a price (`priced` true) and keeps a cost the emitter sent beside it as
    `reported_cost_micros`, for audit only; for a model without a price, the emitter's cost
    is the only one there is and counts as sent (`priced` false).
    """

    chat_id: Id
    root_chat_id: Id | None = None
    message_id: Id
    model: Name
    provider: Name | None = None
    input_tokens: Tokens
    output_tokens: Tokens
    cache_read_tokens: Tokens = 0
    cache_write_tokens: Tokens = 0
    cost_micros: Micros | None = None
    priced: Flag = False
    reported_cost_micros: Micros | None = None
    purpose: Literal["chat", "title"] = "chat"
    # Added after v1 was published, so both are optional and left out of the encoded event
    # when absent: readers of an older release still decode every event that does not use them.
    #: Tokens spent reasoning; already part of `output_tokens`, so never priced on their own.
    reasoning_tokens: Tokens | None = None
    #: Wall-clock milliseconds of the model invocation that produced the message (Agent Time).
    runtime_ms: RuntimeMs | None = None

    @field_validator("reasoning_tokens")
    @classmethod
    def _reasoning_within_output(cls, value: int | None, info: ValidationInfo) -> int | None:
        output = info.data.get("output_tokens")
        if value is not None and isinstance(output, int) and value > output:
            raise PydanticCustomError(
                "reasoning_exceeds_output",
                "Input should be at most output_tokens ({output_tokens}): reasoning tokens are "
                "part of the output tokens",
                {"output_tokens": output},
            )
        return value

    @field_validator("runtime_ms")
    @classmethod
    def _no_runtime_for_titles(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None and info.data.get("purpose") == "title":
            raise PydanticCustomError(
                "runtime_for_title",
                "Input should be absent for title generation, which Agent Time does not count",
            )
        return value

    @model_serializer(mode="wrap")
    def _omit_absent_additions(self, handler: SerializerFunctionWrapHandler) -> dict[str, object]:
        data: dict[str, object] = handler(self)
        for name in ("reasoning_tokens", "runtime_ms"):
            if data.get(name) is None:
                data.pop(name, None)
        return data


class WorkspaceBuild(EventData):
    """A workspace build; agent-managed builds are billable."""

    workspace_id: Id
    build_id: Id
    template: Name
    agent_managed: Flag
    task_id: Id | None = None


class ActivitySession(EventData):
    """Time a user spent in one kind of session, for the Activity API."""

    category: ActivityCategory
    detail: Name | None = None
    duration_ms: DurationMs
    count: PositiveCount = 1
    workspace_id: Id | None = None


class ApiUsage(EventData):
    """Calls a user made through the UI or an SDK, for chargeback usage counts."""

    client: Literal["ui", "sdk"]
    count: PositiveCount = 1


class StorageSample(EventData):
    """A gauge of a project's storage; the latest sample in a period wins."""

    project_id: Id
    size_mb: Megabytes
    experiment_count: Count


class DirectoryUser(EventData):
    """The current state of a user in the directory; the subject is the envelope's user_id."""

    username: Name
    name: DisplayName
    email: Email
    roles: Annotated[tuple[Name, ...], Field(max_length=256)]
    avatar_hash: Id | None = None
    created_at: UtcDatetime
    suspended: Flag = False
    licensed: Flag = True


class DirectoryGroup(EventData):
    """The current state of a group, with its full member list."""

    group_id: Id
    name: Name
    member_ids: MemberIds


class DirectoryTeam(EventData):
    """The current state of a team (a "workspace" in chargeback reports)."""

    team_id: Id
    name: Name
    member_ids: MemberIds


class DirectoryProject(EventData):
    """The current state of a project and the team it belongs to."""

    project_id: Id
    team_id: Id
    name: Name


class Envelope(BaseModel):
    """Fields every event carries; `id` is the deduplication key everywhere."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: Id
    type: str
    occurred_at: UtcDatetime
    org_id: Id | None = None
    user_id: Id | None = None
    data: EventData

    @property
    @abstractmethod
    def partition_key(self) -> str:
        """The Kafka key, which keeps each subject's events in order on one partition."""

    @property
    def identity(self) -> str:
        """What makes two records one event: the type, the subject (partition key) and the id.

        Copies with the same identity are one event, counted once by every consumer; the
        same id with another type or subject is another event. Ids and subjects hold no
        control characters, so the unit separator keeps the parts apart.
        """
        return identity_of(self.type, self.partition_key, self.id)


class UserScopedEnvelope(Envelope):
    """An event about one user's own activity, so `user_id` is required."""

    user_id: Id

    @property
    def partition_key(self) -> str:
        return self.user_id


class ChatUsageRecorded(UserScopedEnvelope):
    """`chat.usage.v1`: a chat message's token usage and cost."""

    type: Literal["chat.usage.v1"] = "chat.usage.v1"
    data: ChatUsage


class WorkspaceBuilt(UserScopedEnvelope):
    """`workspace.build.v1`: a workspace build by a user."""

    type: Literal["workspace.build.v1"] = "workspace.build.v1"
    data: WorkspaceBuild


class ActivitySessionRecorded(UserScopedEnvelope):
    """`activity.session.v1`: time spent in an IDE, app, terminal or similar."""

    type: Literal["activity.session.v1"] = "activity.session.v1"
    data: ActivitySession


class ApiUsageRecorded(UserScopedEnvelope):
    """`api.usage.v1`: UI or SDK calls by a user."""

    type: Literal["api.usage.v1"] = "api.usage.v1"
    data: ApiUsage


class StorageSampled(Envelope):
    """`storage.sample.v1`: a project's storage size; keyed by project."""

    type: Literal["storage.sample.v1"] = "storage.sample.v1"
    data: StorageSample

    @property
    def partition_key(self) -> str:
        return self.data.project_id


class UserUpdated(UserScopedEnvelope):
    """`directory.user.v1`: a user's directory entry; the envelope's user_id is the subject."""

    type: Literal["directory.user.v1"] = "directory.user.v1"
    data: DirectoryUser


class GroupUpdated(Envelope):
    """`directory.group.v1`: a group's name and full member list; keyed by group."""

    type: Literal["directory.group.v1"] = "directory.group.v1"
    data: DirectoryGroup

    @property
    def partition_key(self) -> str:
        return self.data.group_id


class TeamUpdated(Envelope):
    """`directory.team.v1`: a team's name and full member list; keyed by team."""

    type: Literal["directory.team.v1"] = "directory.team.v1"
    data: DirectoryTeam

    @property
    def partition_key(self) -> str:
        return self.data.team_id


class ProjectUpdated(Envelope):
    """`directory.project.v1`: a project and its team; keyed by project."""

    type: Literal["directory.project.v1"] = "directory.project.v1"
    data: DirectoryProject

    @property
    def partition_key(self) -> str:
        return self.data.project_id


Event = Annotated[
    ChatUsageRecorded
    | WorkspaceBuilt
    | ActivitySessionRecorded
    | ApiUsageRecorded
    | StorageSampled
    | UserUpdated
    | GroupUpdated
    | TeamUpdated
    | ProjectUpdated,
    Field(discriminator="type"),
]

# Validates any event by its `type`, and produces the JSON Schema for OpenAPI documents.
EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)
