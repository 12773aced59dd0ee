"""The usage simulator: seeded realistic events, senders, and the totals they must produce."""

from tools.simulator.expected import ChatTotals, Tally, bucket_starts, period_starts
from tools.simulator.generate import Simulation, SimulationConfig, SimUser, window
from tools.simulator.send import IngestSender, KafkaSender, RateLimiter, SendReport, register_prices

__all__ = [
    "ChatTotals",
    "IngestSender",
    "KafkaSender",
    "RateLimiter",
    "SendReport",
    "SimUser",
    "Simulation",
    "SimulationConfig",
    "Tally",
    "bucket_starts",
    "period_starts",
    "register_prices",
    "window",
]
