"""The fixed vocabulary the simulator draws from: models and their prices, tools, templates.

Prices are dollars per million tokens, the same decimal strings the pricing API takes, so
the simulator can register them with ingest and compute every cost with ingest's own rule.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Final

from libs.events.pricing import ModelPrice

__all__ = [
    "APPS",
    "FIRST_NAMES",
    "IDE_DETAILS",
    "LAST_NAMES",
    "MODELS",
    "PRICES",
    "PROVIDER_BILLED_MODEL",
    "TEAM_NAMES",
    "TEMPLATES",
    "TUNNEL_DETAILS",
]


def _price(inp: str, out: str, read: str = "0", write: str = "0") -> ModelPrice:
    return ModelPrice(
        input_price_per_million=Decimal(inp),
        output_price_per_million=Decimal(out),
        cache_read_price_per_million=Decimal(read),
        cache_write_price_per_million=Decimal(write),
    )


#: Models with the share of chat messages they get, the provider and the price.
MODELS: Final[tuple[tuple[str, str, float], ...]] = (
    ("claude-sonnet-4", "anthropic", 0.34),
    ("claude-haiku-3.5", "anthropic", 0.14),
    ("gpt-4o", "openai", 0.18),
    ("gpt-4o-mini", "openai", 0.14),
    ("o3", "openai", 0.08),
    ("gemini-2.5-pro", "google", 0.12),
)

PRICES: Final[dict[str, ModelPrice]] = {
    "claude-sonnet-4": _price("3.00", "15.00", "0.30", "3.75"),
    "claude-haiku-3.5": _price("0.80", "4.00", "0.08", "1.00"),
    "gpt-4o": _price("2.50", "10.00", "1.25"),
    "gpt-4o-mini": _price("0.15", "0.60", "0.075"),
    "o3": _price("2.00", "8.00", "0.50"),
    "gemini-2.5-pro": _price("1.25", "10.00", "0.31"),
}

#: A self-hosted model whose emitter sends its own cost; ingest keeps that cost as it is.
PROVIDER_BILLED_MODEL: Final = "sim-local-llama"

IDE_DETAILS: Final = ("vscode", "code-server", "jetbrains", "pycharm", "jupyter", "rstudio")
TUNNEL_DETAILS: Final = ("ssh", "vscode-remote", "jetbrains-gateway", "coder-tunnel")
APPS: Final = ("grafana", "filebrowser", "streamlit", "jupyterlab", "cursor")
TEMPLATES: Final = ("docker-dev", "k8s-python", "gpu-notebook", "aws-linux", "agent-sandbox")
TEAM_NAMES: Final = (
    "platform",
    "payments",
    "search",
    "data-science",
    "mobile",
    "infra",
    "growth",
    "security",
    "ml-research",
    "developer-tools",
)
FIRST_NAMES: Final = (
    "Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken", "Radia", "Linus",
    "Margaret", "Dennis", "Hedy", "Tim", "Katherine", "Guido", "Sophie", "Yukihiro", "Anita",
    "John",
)  # fmt: skip
LAST_NAMES: Final = (
    "Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Allen", "Thompson",
    "Perlman", "Torvalds", "Hamilton", "Ritchie", "Lamarr", "Berners-Lee", "Johnson", "Rossum",
    "Wilson", "Matsumoto", "Borg", "McCarthy",
)  # fmt: skip
