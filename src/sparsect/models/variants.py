"""The table of model variants, read by every stage, the registry and the report.

A variant is one trainable model. Its entry in ``variants:`` (``conf/variants/``)
names the network class and its arguments, the prior the network is given,
and how the model may be used::

    sg_unet:
      net: {_target_: sparsect.models.unet.SGUNet, predict_prior: true}
      prior: predicted      # none | predicted | threshold | oracle
      deployable: true      # registered and promoted by `sparsect promote`
      upper_bound: false    # reads full-dose data: reported as an upper bound only
      match_params: null    # or a variant name: widen `channels` to its parameter count
      operator: false       # the network reads the measured sinogram through the CT operator

Adding a model is one entry whose ``net._target_`` is the dotted path of any
``torch.nn.Module`` class; nothing else in the code names the variants. A network
receives the keys of the ``model`` section its constructor names
(``in_channels`` = ``model.context_slices``, ``channels``, ``depth``,
``seg_channels``, ``num_classes``), then the entry's own ``net`` keys, which win.
With ``prior: none`` it is called as ``net(fbp)``; with any other prior as
``net(fbp, prior_probs)`` (for ``prior: scan``, ``prior_probs`` is the earlier scan
and its organ map). It returns the reconstruction ``(B, 1, H, W)`` or a
pair ``(reconstruction, segmentation logits | None)``. A network that reads the
measurements (learned iterative schemes such as ``lpd``) sets the class attribute
``needs_operator = True`` and its entry ``operator: true``; it is also given
``sinogram=`` (in its units: ``A x = y``) and ``operator=`` (the CT operator of the
model's geometry) as keywords, trains on whole slices, and is applied only where
the sinogram is at hand.

Only ``torch``, the standard library and sparsect's pure-Python constants are
imported here: a checkpoint's network is rebuilt from its recorded spec on
machines without the pipeline's other dependencies.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from sparsect.errors import InputError
from sparsect.priors.classes import NUM_TISSUE_CLASSES

PRIORS = ("none", "predicted", "threshold", "oracle", "scan")
"""What a network is given beside the FBP: nothing; its own predicted tissue
classes; HU-threshold classes of the FBP; the full-dose classes (an upper bound); an
earlier full-dose scan of the patient, registered, with its organ map (follow-up
imaging: :func:`sparsect.priors.organs.scan_prior`)."""

_ENTRY_KEYS = {"net", "prior", "deployable", "upper_bound", "match_params", "operator"}


@dataclass(frozen=True)
class Variant:
    """One entry of the table (see the module docstring)."""

    name: str
    net: dict[str, Any]
    prior: str = "none"
    deployable: bool = True
    upper_bound: bool = False
    match_params: str | None = None
    operator: bool = False

    @classmethod
    def from_entry(cls, name: str, entry: Mapping[str, Any]) -> Variant:
        """Checks one ``variants.<name>`` entry.

        Raises:
            InputError: naming the entry and the key to fix.
        """
        where = f"variants.{name}"
        if not isinstance(entry, Mapping):
            raise InputError(f"'{where}' must be a section with net and prior: see "
                             "conf/variants/default.yaml.")
        unknown = sorted(set(entry) - _ENTRY_KEYS)
        if unknown:
            raise InputError(f"'{where}' has unknown key(s) {unknown}: use "
                             f"{', '.join(sorted(_ENTRY_KEYS))}.")
        net = dict(entry.get("net") or {})
        if not isinstance(net.get("_target_"), str):
            raise InputError(f"'{where}.net._target_' is missing: name the network class, "
                             "e.g. sparsect.models.unet.UNet.")
        prior = str(entry.get("prior", "none"))
        if prior not in PRIORS:
            raise InputError(f"'{where}.prior' is '{prior}': use one of {', '.join(PRIORS)}.")
        upper_bound = bool(entry.get("upper_bound", prior == "oracle"))
        if prior == "oracle" and not upper_bound:
            raise InputError(f"'{where}' reads full-dose masks (prior oracle): set "
                             "upper_bound: true.")
        deployable = bool(entry.get("deployable", not upper_bound))
        if deployable and upper_bound:
            raise InputError(f"'{where}' is an upper bound and cannot be deployable: set "
                             "deployable: false.")
        match = entry.get("match_params")
        return cls(name, net, prior, deployable, upper_bound,
                   None if match is None else str(match), bool(entry.get("operator", False)))


def variant_table(cfg: Any) -> dict[str, Variant]:
    """``cfg.variants`` as ``{name: Variant}``, in the order of the config.

    Raises:
        InputError: for a malformed entry or a ``match_params`` naming no variant.
    """
    section = cfg.get("variants") if hasattr(cfg, "get") else None
    if not section:
        raise InputError("The config has no 'variants' table: recompose params.yaml with "
                         "`sparsect params`.")
    table = {str(name): Variant.from_entry(str(name), _plain(entry))
             for name, entry in section.items()}
    for variant in table.values():
        if variant.match_params is not None and variant.match_params not in table:
            raise InputError(f"'variants.{variant.name}.match_params' names "
                             f"'{variant.match_params}', which is not a variant: use one of "
                             f"{', '.join(table)}.")
    return table


def known_variant(table: Mapping[str, Variant], name: str) -> Variant:
    """``table[name]``, or an error naming the table's variants."""
    if name not in table:
        raise InputError(f"Model '{name}' is not in the variant table: add it to variants "
                         f"or choose one of {', '.join(table)}.")
    return table[name]


def _plain(value: Any) -> Any:
    """An OmegaConf node (or anything) as plain dicts and lists."""
    if hasattr(value, "items"):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple) or type(value).__name__ == "ListConfig":
        return [_plain(v) for v in value]
    return value


def locate(path: str) -> type:
    """The object at dotted ``path`` (``package.module.Name``).

    Raises:
        InputError: if the module or the name does not exist.
    """
    module_name, _, attribute = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError, ValueError):
        raise InputError(f"Network class '{path}' cannot be imported: give the dotted path "
                         "of an importable class, e.g. sparsect.models.unet.UNet.") from None


def build_net(spec: Mapping[str, Any]) -> nn.Module:
    """Instantiates ``spec['_target_']`` with the other keys of ``spec``."""
    kwargs = {key: value for key, value in spec.items() if key != "_target_"}
    return locate(str(spec["_target_"]))(**kwargs)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def net_spec(variant: Variant, model_cfg: Mapping[str, Any],
             table: Mapping[str, Variant] | None = None) -> dict[str, Any]:
    """The full constructor arguments of ``variant``'s network (recorded in checkpoints).

    ``model_cfg`` is the ``model`` config section. With ``match_params`` the
    ``channels`` are widened to the named variant's parameter count (see
    :func:`matched_width`), which builds networks and so draws from torch's
    random generator: call it where the network's own initialisation is seeded.
    """
    target = locate(str(variant.net["_target_"]))
    if bool(getattr(target, "needs_operator", False)) != variant.operator:
        raise InputError(f"'variants.{variant.name}.operator' is {variant.operator} but "
                         f"{variant.net['_target_']} "
                         f"{'reads' if not variant.operator else 'does not read'} the "
                         f"sinogram: set operator: {str(not variant.operator).lower()}.")
    shared = {
        "in_channels": int(model_cfg["context_slices"]),
        "channels": int(model_cfg["channels"]),
        "depth": int(model_cfg["depth"]),
        "seg_channels": int(model_cfg["seg_channels"]),
        "num_classes": NUM_TISSUE_CLASSES,
    }
    accepted = inspect.signature(target).parameters
    spec = {"_target_": str(variant.net["_target_"]),
            **{key: value for key, value in shared.items() if key in accepted},
            **{key: value for key, value in variant.net.items() if key != "_target_"}}
    if variant.match_params is not None:
        reference_variant = (table or {})[variant.match_params]
        reference = count_parameters(build_net(net_spec(reference_variant, model_cfg, table)))
        spec["channels"] = matched_width(spec, reference)
    return spec


def matched_width(spec: Mapping[str, Any], target: int, key: str = "channels") -> int:
    """Smallest ``spec[key]`` from its value up whose network has at least ``target``
    parameters (at most 8 times wider), or the width one below when that one is closer:
    variants compared at comparable capacity."""
    start = width = int(spec[key])
    while _parameters(spec, key, width) < target and width < 8 * start:
        width += 1
    below, above = _parameters(spec, key, width - 1), _parameters(spec, key, width)
    return width - 1 if width > start and target - below < above - target else width


def _parameters(spec: Mapping[str, Any], key: str, value: int) -> int:
    return count_parameters(build_net({**spec, key: value}))
