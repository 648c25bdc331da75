"""Configuration: compose ``conf/`` with Hydra, read ``params.yaml``, apply overrides.

``conf/`` is the source of truth; ``params.yaml`` is its composition, committed
because ``dvc repro`` reads it (``dvc exp run`` rewrites it from ``conf/``). The
stages read ``params.yaml`` and accept ``key=value`` overrides on the command
line. Overrides are checked against the existing keys, so a typo fails with a
suggestion instead of silently adding a new key.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from sparsect.errors import InputError

DEFAULT_PARAMS = Path("params.yaml")
DEFAULT_CONF_DIR = Path("conf")


def compose(conf_dir: Path = DEFAULT_CONF_DIR, overrides: list[str] | None = None,
            config_name: str = "config") -> dict[str, Any]:
    """Composes ``conf_dir/config_name.yaml`` with Hydra (as ``dvc exp run`` does)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    conf_dir = Path(conf_dir).resolve()
    if not conf_dir.is_dir():
        raise InputError(f"Config folder '{conf_dir}' does not exist: run from the project root.")
    try:
        with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
            cfg = hydra_compose(config_name=config_name, overrides=list(overrides or []))
    except (HydraException, OmegaConfBaseException) as error:
        first_line = str(error).strip().splitlines()[0]
        raise InputError(
            f"Bad config override ({first_line}): check the key and value against conf/."
        ) from None
    return OmegaConf.to_container(cfg, resolve=True)


def _parse_value(text: str) -> Any:
    # Numbers the Python way first: YAML 1.1 reads "1e5" as text and spells
    # infinity ".inf", while users write 1e5 and inf (as Hydra accepts them).
    for number in (int, float):
        try:
            return number(text.strip())
        except ValueError:
            pass
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(cfg: DictConfig, overrides: list[str]) -> DictConfig:
    """Applies ``key=value`` overrides to existing keys only.

    Raises:
        InputError: for a malformed override or an unknown key (with suggestions).
    """
    for override in overrides:
        if "=" not in override or override.startswith("="):
            raise InputError(
                f"Override '{override}' is not of the form key=value: write e.g. geometry.views=60."
            )
        key, value = override.split("=", 1)
        key = key.lstrip("+")
        if OmegaConf.select(cfg, key, default="__missing__") == "__missing__":
            parent = key.rsplit(".", 1)[0] if "." in key else ""
            node = OmegaConf.select(cfg, parent) if parent else cfg
            known = [f"{parent}.{k}" if parent else k for k in node] if isinstance(
                node, DictConfig) else []
            close = difflib.get_close_matches(key, known, n=3)
            fix = (f"did you mean {' or '.join(close)}?" if close
                   else "use a key that exists in params.yaml.")
            raise InputError(f"Unknown config key '{key}' in override '{override}': {fix}")
        current = OmegaConf.select(cfg, key)
        # a text setting keeps the text as written (logger.experiment=2024 is a name)
        parsed = value if isinstance(current, str) else _parse_value(value)
        _check_type(override, key, current, parsed)
        OmegaConf.update(cfg, key, parsed, merge=False)
    return cfg


def _kind(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "a true/false value"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a text"
    if isinstance(value, dict | DictConfig):
        return "a section"
    return "a list"


def _check_type(override: str, key: str, current: Any, new: Any) -> None:
    """Refuses an override that changes a value's kind (text for a number, a name for a
    config section): such a value would only fail later, far from its cause."""
    was, now = _kind(current), _kind(new)
    if "none" in (was, now) or was == now:
        return
    if was == "a section":
        raise InputError(
            f"Override '{override}' selects a config group, which params.yaml cannot take: "
            f"compose it with `sparsect params {override}` or `dvc exp run -S {override}`."
        )
    raise InputError(
        f"Override '{override}' gives {now} where '{key}' holds {was} ({current!r}): "
        f"write e.g. {key}={current}."
    )


def load_params(path: Path = DEFAULT_PARAMS, overrides: list[str] | None = None) -> DictConfig:
    """Reads ``params.yaml`` and applies overrides."""
    path = Path(path)
    if not path.is_file():
        raise InputError(
            f"Parameter file '{path}' is missing: run from the project root or write it with "
            "`sparsect params`."
        )
    try:
        cfg = OmegaConf.create(yaml.safe_load(path.read_text()))
    except yaml.YAMLError as error:
        raise InputError(f"Parameter file '{path}' is not valid YAML ({error}): fix it.") from None
    return apply_overrides(cfg, list(overrides or []))


def to_yaml(payload: dict[str, Any]) -> str:
    return yaml.safe_dump(payload, sort_keys=False, default_flow_style=False)


def write_params(conf_dir: Path, out: Path, overrides: list[str] | None = None) -> Path:
    """Composes ``conf_dir`` with ``overrides`` into the parameter file ``out``."""
    from sparsect.data.store import atomic_write_bytes

    atomic_write_bytes(Path(out), to_yaml(compose(conf_dir, overrides)).encode())
    return Path(out)
