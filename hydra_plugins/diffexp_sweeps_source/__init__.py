"""The `sweeps` config group of a clone, for Hydra.

A wheel ships the sweeps inside the config folder (`diffexp/conf/sweeps/`), but a clone keeps them at its top level
beside `conf/` (pyproject.toml maps both into the package). Hydra's `file://` search path entries are roots whose
subfolders are groups, so the clone's `sweeps/` could only be reached by adding the whole repository as a root (its
`conf/`, `tests/`, ... would become groups). Instead `SweepsSearchPath` adds a `diffexp-sweeps://DIR` entry right
after diffexp's config folder, and `SweepsConfigSource` serves DIR's YAML files as the one group `sweeps`.
Hydra finds plugins only in the `hydra_plugins` namespace package, so this lives here, shipped by pyproject.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from hydra.core.config_search_path import ConfigSearchPath, SearchPathQuery
from hydra.core.object_type import ObjectType
from hydra.plugins.config_source import ConfigLoadError, ConfigResult, ConfigSource
from hydra.plugins.search_path_plugin import SearchPathPlugin
from omegaconf import OmegaConf

GROUP = "sweeps"


class SweepsConfigSource(ConfigSource):
    """`diffexp-sweeps://DIR`: DIR's `*.yaml` files as the options of the group `sweeps`, and nothing else."""

    @staticmethod
    def scheme() -> str:
        return "diffexp-sweeps"

    def _file(self, config_path: str) -> Path | None:
        """`sweeps/NAME` -> DIR/NAME.yaml; None for a path outside the group."""
        group, _, name = config_path.strip("/").rpartition("/")
        return Path(self.path, self._normalize_file_name(name)) if group == GROUP and name else None

    def load_config(self, config_path: str) -> ConfigResult:
        file = self._file(config_path)
        if file is None or not file.is_file():
            raise ConfigLoadError(f"Config not found : {config_path} in {self.full_path()}")
        text = file.read_text(encoding="utf-8")
        return ConfigResult(
            config=OmegaConf.create(text),
            path=self.full_path(),
            provider=self.provider,
            header=self._get_header_dict(text),
        )

    def available(self) -> bool:
        return os.path.isdir(self.path)

    def is_group(self, config_path: str) -> bool:
        return config_path.strip("/") in ("", GROUP) and self.available()

    def is_config(self, config_path: str) -> bool:
        file = self._file(config_path)
        return file is not None and file.is_file()

    def list(self, config_path: str, results_filter: ObjectType | None) -> list[str]:
        path = config_path.strip("/")
        if not self.available():
            return []
        if path == "":
            return [GROUP] if results_filter in (None, ObjectType.GROUP) else []
        if path != GROUP or results_filter == ObjectType.GROUP:
            return []
        return sorted(p.stem for p in Path(self.path).glob("*.yaml"))


class SweepsSearchPath(SearchPathPlugin):
    """Adds the clone's `sweeps/` right after diffexp's config folder when the sweeps are not inside it already.

    Every Hydra app in the environment runs this plugin: it acts only when diffexp's config module is loaded (each
    diffexp command imports it for CONF_DIR before Hydra starts) and that folder is the primary config folder, so
    other apps are left alone; it reads the module from sys.modules rather than importing it, so it registers none
    of diffexp's resolvers in them. A `--config-dir` folder still comes after it, as it comes after conf/.
    """

    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        config = sys.modules.get("diffexp.config")
        if config is None or Path(config.SWEEPS_DIR).parent == Path(config.CONF_DIR):
            return
        main = [e for e in search_path.get_path() if e.provider == "main"]
        if main and Path(main[0].path.removeprefix("file://")).resolve() == Path(config.CONF_DIR).resolve():
            sweeps = f"{SweepsConfigSource.scheme()}://{config.SWEEPS_DIR}"
            search_path.append("diffexp", sweeps, anchor=SearchPathQuery(provider="main"))
