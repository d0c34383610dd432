"""Errors caused by the user's input (config, data, weights, run ids).

The CLI prints these as one line and exits non-zero; anything else is a bug and keeps its
traceback.
"""


class SweeplabError(Exception):
    """Bad input: the message names what is wrong and how to fix it."""
