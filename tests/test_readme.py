"""The README cannot rot: every `diffexp-*` command it (and docs/recipes.md) shows composes against today's configs.

Running them is covered elsewhere (test_cli, test_sweeps, test_compare, ...); here each line of the README's
shell blocks is parsed as the user would type it and composed by Hydra with its own app config.
"""

from __future__ import annotations

import re
import shlex

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from diffexp.config import CONF_DIR
from helpers import REPO


def readme_commands(*docs: str) -> list[str]:
    text = "\n".join((REPO / doc).read_text() for doc in ("README.md", *docs))
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    lines = [line.split(" #")[0].strip() for block in blocks for line in block.splitlines()]
    # `--config-dir REPORT/conf` needs a report: test_compare's close-the-loop test runs that line's command itself.
    return [line for line in lines if line.startswith("diffexp-") and "--config-dir" not in line]


def test_readme_shows_every_command():
    shown = {line.split()[0] for line in readme_commands()}
    assert shown == {f"diffexp-{c}" for c in ("train", "sample", "evaluate", "compare", "reproduce", "export")}


@pytest.mark.parametrize("line", readme_commands("docs/recipes.md"))
def test_readme_command_composes(line):
    command, *args = shlex.split(line)
    overrides = [a for a in args if a != "-m"]
    if "-m" in args:  # a sweep: compose its first job
        overrides = [o if "[" in o else o.split(",")[0] for o in overrides]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name=command.removeprefix("diffexp-"), overrides=overrides, return_hydra_config=True)
    choices = cfg.hydra.runtime.choices
    for override in overrides:  # a group option the line names is the one composed
        key, _, value = override.partition("=")
        if key in choices and "," not in value:
            assert choices[key] == value, (line, key)
