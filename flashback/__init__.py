"""Flashback: decentralized file sharing with a thin relay tracker."""

from __future__ import annotations

__version__ = "0.1.0"
