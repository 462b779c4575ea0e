"""Kedro's project CLI hook: Kedro imports ``<package>.cli`` by that name; the commands live in
:mod:`toptune.integrations.cli`."""

from toptune.integrations.cli import cli

__all__ = ["cli"]
