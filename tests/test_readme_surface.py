"""README.md names the whole surface: every route of ``signin_routes`` and every CLI command.

The lists are read from the code (the URL table with ``risc.enabled``, the
argparse tree), so a route or a command added later fails here until the
README's "HTTP surface" table or "CLI" section shows it.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from harness import make_config
from tornado_signin.app import signin_routes
from tornado_signin.cli import build_parser
from tornado_signin.wiring import build_context

README = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")


def _section(title: str) -> str:
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start:end]


def _commands(parser: argparse.ArgumentParser, prefix: str = "") -> list[str]:
    """Return every command line of ``parser``: ``serve``, ``risc register``, …"""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                nested = _commands(child, f"{prefix}{name} ")
                found += nested or [f"{prefix}{name}"]
    return found


@pytest.mark.gen_test
async def test_the_http_surface_table_names_every_route():
    ctx = build_context(make_config("http://127.0.0.1:8080", "http://127.0.0.1:8081", risc={"enabled": True}))
    try:
        paths = [pattern.replace("\\", "") for pattern, _, _ in signin_routes(ctx)]
    finally:
        await ctx.close()
    table = [line for line in _section("HTTP surface").splitlines() if line.startswith("| `")]
    assert len(paths) >= 14
    missing = [p for p in paths if not any(re.search(rf"`(GET|POST) {re.escape(p)}[` ?]", row) for row in table)]
    assert missing == []


def test_the_cli_section_names_every_command():
    commands = _commands(build_parser())
    assert "risc verify" in commands and "genkey" in commands
    section = _section("CLI")
    assert [c for c in commands if f"tornado-signin {c} " not in section and f"tornado-signin {c}\n" not in section] == []
