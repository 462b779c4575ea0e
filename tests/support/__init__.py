"""Shared helpers of the tests (plain functions and constants; fixtures live in conftest.py): tests import
``support.<topic>``, never another test module."""
