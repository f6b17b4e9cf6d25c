"""Every console script, command and option as users know them: the surface before the CLI became a package
(tests/data/cli_surface.json, taken from cellsdk 0.9's cli.py) must stay as it is; a change is deliberate and
updates that file."""

from __future__ import annotations

import configparser
import json

from cellsdk.cli import cli
from tests.conftest import REPO

SURFACE = json.loads((REPO / "tests" / "data" / "cli_surface.json").read_text(encoding="utf-8"))


def _surface(command) -> dict:
    return {p.name: {k: v for k, v in p.to_info_dict().items() if k != "help"} for p in command.params}


def _normalised(data):
    return json.loads(json.dumps(data, sort_keys=True, default=str))


def test_every_command_keeps_its_options_types_and_defaults():
    assert sorted(cli.list_commands(None)) == sorted(SURFACE["commands"])
    for name in cli.list_commands(None):
        command = cli.get_command(None, name)
        assert _normalised(_surface(command)) == SURFACE["commands"][name], name
    assert _normalised(_surface(cli)) == SURFACE["group"]


def test_every_console_script_points_at_the_same_command():
    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    scripts = dict(line.split(" = ") for line in config["options.entry_points"]["console_scripts"].strip().splitlines())
    assert {name: target.split(":")[1] for name, target in scripts.items()} == SURFACE["console_scripts"]
    import cellsdk.cli as module

    for target in scripts.values():
        assert callable(getattr(module, target.split(":")[1]))
