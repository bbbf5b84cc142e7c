"""Aggregation of stored trials into ranked tables (reads only the result store)."""
from leaderboard.aggregate import COLUMNS, aggregate  # noqa: F401
from leaderboard.render import render  # noqa: F401
