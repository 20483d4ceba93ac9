"""``python -m bayesnlme.cli``: the ``bayesnlme`` command."""

from bayesnlme.cli import entry

entry()
