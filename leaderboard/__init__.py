"""Aggregation of stored trials into ranked tables (reads only the result store).

The static HTML site is :func:`leaderboard.site.build`, imported on its own so that the text
tables do not load matplotlib and Jinja2.
"""
from leaderboard.aggregate import BOARD_COLUMNS, COLUMNS, aggregate, boards, bootstrap_ci  # noqa: F401
from leaderboard.render import render  # noqa: F401
