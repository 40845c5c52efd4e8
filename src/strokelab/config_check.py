"""Check a composed config before any work: what structured configs would check, for Hydra's ``_target_`` nodes.

Hydra refuses ``key=value`` overrides of keys that do not exist, but not a key added with ``+``, a typo inside a
YAML file of ``conf/`` or a value of the wrong type: those failed later, deep inside ``instantiate`` or after
minutes of preprocessing. :func:`check_config` walks the composed config right after composition and refuses,
one line per problem naming the key, the file it comes from and the fix:

* a key of a node with a ``_target_`` that is not a parameter of the target (a class's ``__init__``, a
  function); a target whose ``__init__`` takes ``**kwargs`` is followed up its base classes while strokelab's
  own code passes them on to ``super().__init__`` (the models pass ``**settings`` to
  :class:`strokelab.models.base.Model`), and only a signature that keeps ``**kwargs`` for itself (a
  logger's settings for wandb) accepts any key;
* a value whose parameter has a simple annotation (``int``, ``float``, ``bool``, ``str``, ``Literal``, lists
  and tuples of those, ``X | None``) and does not fit it: an int for a float is fine, a bool for an int is not
  (values typed on the command line are already typed by Hydra's grammar: ``2.5`` is a float, ``abc`` a string);
* the settings that a few parameters take as a mapping (``data.preprocess``, ``data.phantom``,
  ``data.weight_map``, ``model.inference``, the terms of ``model.losses``): their keys and types;
* an interpolation that cannot be resolved;
* a top-level key that is neither in the primary config (``conf/train.yaml``, ``conf/predict.yaml``) nor one
  of its config groups (``+foo=1``), and top-level values of the wrong type (:data:`SCHEMAS`).

Every target is imported (which running the config needs anyway) and nothing else is done: no file is read
besides the config's own YAML files, for the hint of where a key comes from.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import importlib
import inspect
import logging
import os
import re
import sys
import types
import typing
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, MutableMapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any, Literal

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict, read_write
from omegaconf.errors import OmegaConfBaseException

from strokelab.errors import ConfigError

log = logging.getLogger(__name__)

# Keys of a ``_target_`` node that Hydra reads itself.
HYDRA_KEYS = frozenset({"_target_", "_partial_", "_convert_", "_recursive_", "_args_"})
MAX_LISTED = 25  # parameters listed in a message (Lightning's Trainer has 50)
MAX_PROBLEMS = 20


class Node:
    """Schema marker: a config node with a ``_target_``, checked against its target's signature."""


class Nodes:
    """Schema marker: a mapping of name -> :class:`Node` or null (``logger``, ``callbacks``)."""


# The top-level keys of conf/train.yaml and conf/predict.yaml and their types. A key of the primary config file
# that is missing here is allowed but not type-checked (tests/test_config_check.py asks for every one).
PATHS = {"root_dir": str, "data_dir": str, "cache_dir": str, "log_dir": str, "output_dir": str}
INFERENCE = {
    "patch_size": Sequence[int],
    "overlap": float,
    "batch_size": int,
    "mirror_axes": Sequence[int],
    "bf16": bool,
}
SCHEMAS: dict[str, dict[str, Any]] = {
    "train": {
        "task_name": str,
        "model_name": str,
        "monitor": {"metric": str, "mode": Literal["min", "max"]},
        "tags": Sequence[str],
        "seed": int | None,
        "train": bool,
        "test": bool,
        "ckpt_path": str | None,
        "run_name": str,
        "widths": Sequence[int],
        "budget_epochs": int,
        "val_images": int,
        "val_images_every": int,
        "paths": PATHS,
        "data": Node,
        "model": Node,
        "baseline": Node | None,
        "loss": Node,
        "trainer": Node,
        "logger": Nodes | None,
        "callbacks": Nodes | None,
    },
    "predict": {
        "task_name": str,
        "input": str | None,
        "output": str | None,
        "ckpt": str | None,
        "device": str | int | None,
        "threshold": float | None,
        "overwrite": bool,
        "run_name": str,
        "inference": INFERENCE,
        "paths": PATHS,
        "model": Node | None,
    },
}


@dataclass(frozen=True)
class Nested:
    """The settings a parameter takes as a mapping: ``schema`` is a dataclass path or a dict of key -> type;
    ``each``: the parameter maps names to such settings (a model's loss terms)."""

    owner: str  # the class (or a base class) whose parameter it is
    param: str
    schema: str | Mapping[str, Any]
    each: bool = False


NESTED = (
    Nested("strokelab.data.datamodule.StrokeDataModule", "preprocess", "strokelab.data.preprocess.Preprocessing"),
    Nested("strokelab.data.datamodule.StrokeDataModule", "phantom", "strokelab.data.phantom.config.PhantomConfig"),
    Nested("strokelab.data.datamodule.StrokeDataModule", "weight_map", {"w": float, "D": float, "unit": Literal["voxel", "mm"]}),
    Nested("strokelab.models.base.Model", "inference", INFERENCE),
    Nested("strokelab.models.base.Model", "losses", "strokelab.models.base.LossTerm", each=True),
)

# Base-class __init__s that take *args/**kwargs only to be cooperative and refuse any keyword: no parameters.
CLOSED_INITS = ("builtins.object.__init__", "torch.nn.modules.module.Module.__init__")
_NO_DEFAULT = inspect.Parameter.empty  # a setting without a default: null only where its type allows it


# -- signatures ----------------------------------------------------------------------------------------------
@dataclass
class Param:
    annotation: Any  # a type, or inspect.Parameter.empty / None when unknown
    default: Any
    owner: str  # qualified name of the class or function that declares it


@dataclass
class Spec:
    """What a ``_target_`` accepts as keyword arguments."""

    target: str
    obj: Any
    params: dict[str, Param] = field(default_factory=dict)
    open: bool = False  # takes **kwargs that it keeps (any key goes)


def _qualname(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', getattr(obj, '__name__', '?'))}"


def _eval_annotation(annotation: Any, namespace: Mapping[str, Any]) -> Any:
    """An annotation as an object: a string (``from __future__ import annotations``) is evaluated in the
    namespace of its module; None (unknown) when that fails (a name imported only for type checkers)."""
    if annotation is inspect.Parameter.empty:
        return None
    if not isinstance(annotation, str):
        return annotation
    try:
        return eval(annotation, {**vars(typing), **namespace})  # noqa: S307 - as typing.get_type_hints does
    except Exception:
        return None


def _namespace(obj: Any) -> Mapping[str, Any]:
    module = sys.modules.get(getattr(obj, "__module__", "") or "")
    return getattr(obj, "__globals__", None) or (vars(module) if module else {})


def _forwards_kwargs(init: Callable, varkw: str) -> bool:
    """Whether ``init`` passes its ``**varkw`` on to ``super().__init__(...)`` (read from its source)."""
    try:
        source = inspect.getsource(init)
    except (OSError, TypeError):
        return False
    start = source.find("super().__init__(")
    while start >= 0:
        i = start + len("super().__init__(")
        depth = 1
        while i < len(source) and depth:
            depth += {"(": 1, ")": -1}.get(source[i], 0)
            i += 1
        if re.search(rf"\*\*{re.escape(varkw)}\b", source[start:i]):
            return True
        start = source.find("super().__init__(", i)
    return False


def _add_params(spec: Spec, fn: Callable, owner: str) -> inspect.Parameter | None:
    """Add ``fn``'s keyword parameters to ``spec``; return its ``**kwargs`` parameter, if any."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # a builtin without a signature: accept anything
        spec.open = True
        return None
    varkw = None
    for name, p in signature.parameters.items():
        if p.kind is p.VAR_KEYWORD:
            varkw = p
        elif p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and name != "self" and name not in spec.params:
            spec.params[name] = Param(_eval_annotation(p.annotation, _namespace(fn)), p.default, owner)
    return varkw


def locate(path: str) -> Any:
    """The object a dotted ``_target_`` names, as Hydra finds it (the longest importable module, then attributes),
    without Hydra's error log; ImportError with a one-line reason when there is none."""
    parts = path.split(".")
    for i in range(len(parts), 0, -1):
        module = ".".join(parts[:i])
        try:
            obj = importlib.import_module(module)
        except ModuleNotFoundError as err:
            if err.name is not None and (module == err.name or module.startswith(err.name + ".")):
                continue  # not a module: an attribute of a shorter one
            raise ImportError(f"importing {module} fails: {err}") from None
        where = module
        for name in parts[i:]:
            if not hasattr(obj, name):
                raise ImportError(f"{where} has no {name}")
            obj, where = getattr(obj, name), f"{where}.{name}"
        return obj
    raise ImportError(f"no module {parts[0]}")


@functools.cache
def signature_spec(target: str) -> Spec:
    """The keyword arguments ``target`` (a dotted path, as in ``_target_``) accepts. A class's ``__init__`` that
    takes ``**kwargs`` is followed up the class's MRO while strokelab's own code passes them to
    ``super().__init__``. Raises ImportError/AttributeError when the target cannot be imported."""
    obj = locate(target)
    spec = Spec(target, obj)
    if not inspect.isclass(obj):
        varkw = _add_params(spec, obj, _qualname(obj))
        spec.open = spec.open or varkw is not None
        return spec
    inits = [k for k in obj.__mro__ if "__init__" in vars(k)]
    for klass in inits:
        init = vars(klass)["__init__"]
        if f"{_qualname(klass)}.__init__" in CLOSED_INITS:
            return spec
        varkw = _add_params(spec, init, _qualname(klass))
        if varkw is None:
            return spec
        if not (klass.__module__.startswith("strokelab.") and _forwards_kwargs(init, varkw.name)):
            spec.open = True
            return spec
    return spec


def _fields_of(schema: str | Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Key -> (annotation, default) of a nested schema: a dict of types (no defaults), or a dataclass path by its
    fields; a field made by a default factory (an empty mapping or list) counts as defaulting to None, which a
    config writes as null."""
    if isinstance(schema, Mapping):
        return {k: (v, _NO_DEFAULT) for k, v in schema.items()}
    module, _, name = schema.rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    out = {}
    for f in dataclasses.fields(cls):
        factory = f.default_factory is not dataclasses.MISSING
        out[f.name] = (_eval_annotation(f.type, _namespace(cls)), None if factory else f.default)
    return out


# -- types ---------------------------------------------------------------------------------------------------
_UNION_TYPES = (typing.Union, types.UnionType)
_SEQUENCES = (list, tuple, Sequence, Iterable, Collection)
_MAPPINGS = (dict, Mapping, MutableMapping)


def type_name(annotation: Any) -> str:
    """A short readable form: ``int | None``, ``Sequence[int]``, ``'min' | 'max'``."""
    if annotation is None or annotation is type(None):
        return "None"
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        return " | ".join(repr(a) for a in args)
    if origin in _UNION_TYPES:
        return " | ".join(type_name(a) for a in args)
    if origin is not None:
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{', '.join('...' if a is Ellipsis else type_name(a) for a in args)}]" if args else name
    if annotation is Node:
        return "a config node with _target_"
    if annotation is Nodes:
        return "a mapping of config nodes with _target_"
    return getattr(annotation, "__name__", str(annotation).replace("typing.", ""))


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return f"the list {_short(value)}"
    return f"{_short(value)} ({type(value).__name__})"


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value) if not isinstance(value, str) else f"'{value}'"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_instantiated(value: Any) -> bool:
    return isinstance(value, Mapping) and "_target_" in value


def accepts(annotation: Any, value: Any) -> bool | None:
    """Whether a config value (plain Python: None, bool, int, float, str, list, dict) fits ``annotation``:
    True, False, or None when the annotation says too little to tell (a class a config value cannot be, Any,
    Callable, an unresolved forward reference), which is accepted."""
    if annotation is None or annotation is Any or isinstance(annotation, (str, typing.TypeVar, typing.ForwardRef)):
        return None
    if annotation is type(None):
        return value is None
    if annotation is Node:
        return _is_instantiated(value)
    if annotation is Nodes:
        return isinstance(value, Mapping) and all(v is None or _is_instantiated(v) for v in value.values())
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in _UNION_TYPES:
        verdicts = [accepts(a, value) for a in args]
        return True if True in verdicts else (None if None in verdicts else False)
    if origin is Literal:
        return any(type(value) is type(a) and value == a for a in args)
    if _is_instantiated(value):
        return None  # an object Hydra builds: its type is known only once built
    if annotation in (int, float, bool, str):
        if annotation is float:
            return isinstance(value, (int, float)) and not isinstance(value, bool)
        if annotation is int:
            return isinstance(value, int) and not isinstance(value, bool)
        return isinstance(value, annotation)
    container = origin or annotation
    if container in _MAPPINGS:
        if not isinstance(value, Mapping):
            return False
        return _all([accepts(args[1], v) for v in value.values()]) if len(args) == 2 else True
    if container in _SEQUENCES:
        if not isinstance(value, list):
            return None if container is Iterable and not args else False
        if not args:
            return True
        if container is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            return len(value) == len(args) and _all([accepts(a, v) for a, v in zip(args, value)])
        return _all([accepts(args[0], v) for v in value])
    if inspect.isclass(annotation):
        if issubclass(annotation, (PurePath, os.PathLike)) and isinstance(value, str):
            return True
        return True if isinstance(value, annotation) else None
    return None


def _all(verdicts: list[bool | None]) -> bool | None:
    return False if False in verdicts else (None if None in verdicts else True)


def _value_fits(annotation: Any, default: Any, value: Any) -> bool:
    """``accepts``, with null also fine for a parameter whose default is None."""
    if value is None and default is None:
        return True
    return accepts(annotation, value) is not False


# -- where a key comes from ----------------------------------------------------------------------------------
@dataclass
class Sources:
    """The config files (and command-line overrides) a composed config came from, to say where a key is set."""

    files: list[tuple[Path, str]] = field(default_factory=list)  # (file, the package its keys land in)
    overrides: list[str] = field(default_factory=list)
    groups: set[str] = field(default_factory=set)  # config groups: their overrides choose files, not values
    primary: Path | None = None

    @classmethod
    def from_hydra(cls, hydra: Any) -> Sources:
        out = cls()
        if hydra is None:
            return out
        dirs = [Path(s.path) for s in hydra.runtime.get("config_sources", []) if s.schema == "file"]
        task = hydra.overrides.get("task")  # read as typed: an override may hold an interpolation
        out.overrides = [str(o) for o in (OmegaConf.to_container(task, resolve=False) if task is not None else [])]

        def find(rel: str) -> Path | None:
            return next((d / rel for d in dirs if (d / rel).is_file()), None)

        def add(group: str, option: str, package: str | None, seen: set) -> None:
            path = find(f"{group}/{option}.yaml")
            if path is None or path in seen:
                return
            seen.add(path)
            text = path.read_text()
            header = re.search(r"^#\s*@package\s+(\S+)", text, re.M)
            prefix = "" if header and header.group(1) == "_global_" else (package or group.replace("/", "."))
            try:
                parents = OmegaConf.load(path).get("defaults") or []
            except Exception:
                parents = []
            for entry in parents:
                if isinstance(entry, str) and entry != "_self_":
                    add(group, entry, package, seen)
            out.files.append((path, prefix))

        name = hydra.job.get("config_name")
        if name:
            out.primary = find(f"{name}.yaml")
            if out.primary is not None:
                out.files.append((out.primary, ""))
        choices = dict(hydra.runtime.get("choices", {}))
        out.groups = {str(g) for g in choices}
        seen: set = set()
        for group, option in reversed(list(choices.items())):  # Hydra lists them last-merged first
            if option is None or group == "hydra" or group.startswith("hydra/"):
                continue
            group, _, package = group.partition("@")
            add(group, str(option), package or None, seen)
        return out

    def defining(self, key: str) -> list[str]:
        """Files that set ``key`` (in merge order), shown relative to the working directory when inside it."""
        parts = [p for p in re.sub(r"\[\d+\]", "", key).split(".") if p]
        found = []
        for path, prefix in self.files:
            head = prefix.split(".") if prefix else []
            if parts[: len(head)] != head or len(parts) == len(head):
                continue
            try:
                node: Any = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
            except Exception:
                continue
            for part in parts[len(head) :]:
                node = node.get(part) if isinstance(node, dict) and part in node else _MISSING
                if node is _MISSING:
                    break
            if node is not _MISSING:
                found.append(_shown(path))
        return found

    def override_of(self, key: str) -> str | None:
        """The command-line override that sets ``key`` (or a node above it), if any."""
        for override in self.overrides:
            name = override.lstrip("~+").split("=", 1)[0]
            if name in self.groups or "/" in name:
                continue
            if key == name or key.startswith(name + ".") or key.startswith(name + "["):
                return override
        return None

    def fix(self, key: str, what: str = "key") -> str:
        """``fix the key in conf/model/unet.yaml or the command line``, as far as the sources tell."""
        override = self.override_of(key)
        if override is not None:
            return f"fix the {what} on the command line ({override})"
        files = self.defining(key)
        if files:
            return f"fix the {what} in {' or '.join(dict.fromkeys(files))} or the command line"
        return f"fix the {what} in the config files or the command line"


_MISSING = object()


def _shown(path: Path) -> str:
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return str(path)
    return str(path) if rel.startswith("..") else rel


# -- the walk ------------------------------------------------------------------------------------------------
@dataclass
class _Walk:
    sources: Sources
    found: list[tuple[str, str, str | None]] = field(default_factory=list)  # (key, problem, ${reference} or None)
    bad: set[str] = field(default_factory=set)  # keys with a problem
    count: int = 0  # problems found (a repeated one too)

    def problem(self, key: str, text: str, what: str = "key", ref: str | None = None) -> None:
        """A problem of ``key``; ``ref``: its value is ``${ref}``, so the fix is there."""
        self.bad.add(key)
        self.count += 1
        fix = self.sources.fix(ref, f"value of {ref}") if ref else self.sources.fix(key, what)
        self.found.append((key, f"{text}; {fix}", ref))

    def lines(self) -> list[str]:
        """One line per problem at its origin: a value that is ``${other.key}`` of a key with a problem, and an
        interpolation that fails for the reason another one did, are not repeated."""
        out, causes = [], set()
        for key, text, ref in self.found:
            if ref is not None and any(ref == b or ref.startswith(b + ".") for b in self.bad if b != key):
                continue
            cause = text.split("; ", 1)[0] if text.startswith("cannot be resolved") else None
            line = f"config key {key}: {text}"
            if cause in causes or line in out:
                continue
            if cause:
                causes.add(cause)
            out.append(line)
        return out

    # values --------------------------------------------------------------------------------------------
    def get(self, node: DictConfig | ListConfig, k: Any, key: str) -> tuple[bool, Any]:
        """(ok, value) of ``node[k]``, resolved; an unresolvable value is a problem."""
        try:
            return True, node[k]
        except OmegaConfBaseException as err:
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            if type(err).__name__ == "MissingMandatoryValue":
                self.problem(key, "has no value (???)", "value")
            else:
                self.problem(key, f"cannot be resolved: {first}", "interpolation")
            return False, None

    def plain(self, value: Any, key: str) -> tuple[bool, Any]:
        if not isinstance(value, (DictConfig, ListConfig)):
            return True, value
        try:
            return True, OmegaConf.to_container(value, resolve=True)
        except OmegaConfBaseException as err:
            self.problem(
                getattr(err, "full_key", None) or key, f"cannot be resolved: {str(err).splitlines()[0]}", "interpolation"
            )
            return False, None

    def check_type(self, key: str, annotation: Any, default: Any, value: Any, whose: str, raw: str | None = None) -> None:
        """Refuse ``value`` unless it fits ``annotation``; ``raw``: the interpolation it came from."""
        if _value_fits(annotation, default, value):
            return
        hint = ""
        if isinstance(value, (int, float, bool)) and annotation in (str, str | None):
            hint = f" (quote it for a string: {key.rsplit('.', 1)[-1]}='{value}')"
        origin = f" (from {raw})" if raw else ""
        ref = re.fullmatch(r"\$\{([\w.]+)\}", raw) if raw else None
        text = f"{_describe(value)}{origin} is not {type_name(annotation)}{hint}, as {whose} expects"
        self.problem(key, text, "value", ref.group(1) if ref else None)

    # containers ----------------------------------------------------------------------------------------
    def walk(self, node: DictConfig | ListConfig, key: str) -> None:
        """Resolve every value below ``node`` and check every ``_target_`` node in it."""
        items = range(len(node)) if isinstance(node, ListConfig) else list(node.keys())
        for k in items:
            child = f"{key}[{k}]" if isinstance(node, ListConfig) else _join(key, k)
            ok, value = self.get(node, k, child)
            if ok and isinstance(value, (DictConfig, ListConfig)) and not OmegaConf.is_interpolation(node, k):
                self.container(value, child)

    def container(self, value: DictConfig | ListConfig, key: str) -> None:
        if isinstance(value, DictConfig) and "_target_" in value:
            self.target_node(value, key)
        else:
            self.walk(value, key)

    def target_node(self, node: DictConfig, key: str) -> None:
        ok, target = self.get(node, "_target_", f"{key}._target_")
        if not ok:
            return
        try:
            spec = signature_spec(str(target))
        except Exception as err:
            reason = " ".join(str(err).split())
            self.problem(f"{key}._target_", f"cannot import {target} ({reason})", "value")
            return
        for k in list(node.keys()):
            if k in HYDRA_KEYS:
                continue
            child = _join(key, k)
            param = spec.params.get(str(k))
            if param is None and not spec.open:
                self.problem(child, f"not a parameter of {spec.target} ({_param_list(spec, str(k))})")
                continue
            before = self.count
            ok, value = self.get(node, k, child)
            if not ok:
                continue
            interpolated = OmegaConf.is_interpolation(node, k)
            if isinstance(value, (DictConfig, ListConfig)) and not interpolated:
                self.container(value, child)
            if param is None or self.count > before:
                continue
            ok, plain = self.plain(value, child)
            if not ok:
                continue
            self.check_type(child, param.annotation, param.default, plain, f"the {k} of {spec.target}", _raw(node, k))
            nested = _nested_for(spec, str(k))
            if nested is not None and isinstance(plain, Mapping):
                self.nested(nested, plain, child)

    def nested(self, nested: Nested, value: Mapping, key: str) -> None:
        fields = _fields_of(nested.schema)
        whose = nested.schema if isinstance(nested.schema, str) else f"{nested.owner}'s {nested.param}"
        entries = {_join(key, name): v for name, v in value.items()} if nested.each else {key: value}
        for where, settings in entries.items():
            if settings is None:
                continue
            if not isinstance(settings, Mapping):
                self.problem(where, f"{_describe(settings)} is not a mapping of {', '.join(fields)}", "value")
                continue
            for name, v in settings.items():
                if name not in fields:
                    close = difflib.get_close_matches(str(name), list(fields), n=1)
                    mean = f"did you mean {close[0]}? " if close else ""
                    self.problem(_join(where, name), f"not a setting of {whose} ({mean}settings: {', '.join(fields)})")
                elif _join(where, name) not in self.bad:
                    self.check_type(_join(where, name), *fields[name], v, whose)

    # the top level -------------------------------------------------------------------------------------
    def schema(self, cfg: DictConfig, schema: Mapping[str, Any], key: str, allowed: Iterable[str] = ()) -> None:
        """Top-level keys (and nested plain mappings such as ``paths``) against ``schema``; nodes last."""
        known = [*schema, *(a for a in allowed if a not in schema)]
        later = []
        for k in list(cfg.keys()):
            child = _join(key, k)
            if k not in known:
                close = difflib.get_close_matches(str(k), known, n=1)
                mean = f"did you mean {close[0]}? " if close else ""
                where = f"a key of {key}" if key else "a top-level key"
                self.problem(child, f"not {where} ({mean}keys: {', '.join(known)})")
                continue
            expected = schema.get(k)
            ok, value = self.get(cfg, k, child)
            if not ok:
                continue
            if isinstance(expected, Mapping):
                if isinstance(value, DictConfig):
                    self.schema(value, expected, child)
                elif value is not None:
                    self.problem(child, f"{_describe(value)} is not a mapping of {', '.join(expected)}", "value")
                continue
            if _mentions(expected, (Node, Nodes)):
                later.append((k, child, expected, value))
                continue
            before = self.count
            if isinstance(value, (DictConfig, ListConfig)) and not OmegaConf.is_interpolation(cfg, k):
                self.container(value, child)
            if expected is None or self.count > before:
                continue
            ok, plain = self.plain(value, child)
            if ok:
                self.check_type(child, expected, _NO_DEFAULT, plain, "the config", _raw(cfg, k))
        for k, child, expected, value in later:
            if value is None:
                if accepts(expected, None) is False:
                    self.problem(child, f"is null, not {type_name(expected)}", "value")
                continue
            if not isinstance(value, DictConfig):
                self.problem(child, f"{_describe(value)} is not {type_name(expected)}", "value")
            elif _mentions(expected, (Node,)) and "_target_" in value:
                self.target_node(value, child)
            elif _mentions(expected, (Nodes,)):
                for name in list(value.keys()):
                    ok, item = self.get(value, name, _join(child, name))
                    if not ok or item is None:
                        continue
                    if isinstance(item, DictConfig) and "_target_" in item:
                        self.target_node(item, _join(child, name))
                    else:
                        self.problem(_join(child, name), f"{_describe(_plain_quiet(item))} is not a config node with _target_")
            else:
                self.problem(child, "has no _target_ (the class or function it builds)")


def _raw(node: DictConfig | ListConfig, k: Any) -> str | None:
    """The interpolation ``node[k]`` holds (``${data.modalities}``), or None for a plain value."""
    return str(node._get_node(k)._value()) if OmegaConf.is_interpolation(node, k) else None


def _plain_quiet(value: Any) -> Any:
    try:
        return OmegaConf.to_container(value, resolve=False) if isinstance(value, (DictConfig, ListConfig)) else value
    except Exception:
        return value


def _mentions(annotation: Any, markers: tuple[type, ...]) -> bool:
    return annotation in markers or any(a in markers for a in typing.get_args(annotation))


def _join(key: str, k: Any) -> str:
    return f"{key}.{k}" if key else str(k)


def _param_list(spec: Spec, wrong: str) -> str:
    names = list(spec.params)
    close = difflib.get_close_matches(wrong, names, n=1)
    mean = f"did you mean {close[0]}? " if close else ""
    shown = ", ".join(names[:MAX_LISTED]) + (f", ... ({len(names)} in all)" if len(names) > MAX_LISTED else "")
    return f"{mean}parameters: {shown or 'none'}"


def _nested_for(spec: Spec, param: str) -> Nested | None:
    if not inspect.isclass(spec.obj):
        return None
    names = {_qualname(k) for k in spec.obj.__mro__}
    return next((n for n in NESTED if n.param == param and n.owner in names), None)


# -- entry points --------------------------------------------------------------------------------------------
@contextmanager
def _hydra_config(cfg: DictConfig, keep: bool = False) -> Iterator[Any]:
    """Make ``${hydra:...}`` resolvable for ``cfg`` (a composed config with its ``hydra`` node), as Hydra's run
    does before the job: the job's output directory is the run (or sweep) directory. Restored afterwards unless
    ``keep`` (a multirun's sweeper resolves ``hydra.sweep.dir``, which may read ``${hydra:...}``, before any
    job sets it)."""
    instance = HydraConfig.instance()
    previous = instance.cfg
    full = copy.deepcopy(cfg)
    try:
        instance.set_config(full)
        if OmegaConf.is_missing(full.hydra.runtime, "output_dir"):
            multirun = str(full.hydra.get("mode")) == "RunMode.MULTIRUN"
            try:
                out = str(OmegaConf.select(full, "hydra.sweep.dir" if multirun else "hydra.run.dir", throw_on_missing=True))
            except OmegaConfBaseException as err:
                key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
                raise ConfigError(f"config key {key}", f"cannot be resolved: {str(err).splitlines()[0]}") from None
            with read_write(full.hydra.runtime), open_dict(full.hydra.runtime):
                full.hydra.runtime.output_dir = os.path.abspath(out)
            instance.set_config(full)
        yield full.hydra
    finally:
        if not keep or instance.cfg is None:
            instance.cfg = previous


def check_config(cfg: DictConfig, config_name: str | None = None, keep_hydra_config: bool = False) -> None:
    """Refuse ``cfg`` (a composed config, with or without its ``hydra`` node) with a :class:`ConfigError`, one
    line per problem, if a key is not a parameter of its node's ``_target_``, a value does not fit its type, an
    interpolation does not resolve or a top-level key is unknown (see the module docstring). Cheap: it imports
    the targets and reads no data. ``keep_hydra_config``: leave Hydra's config set for ``cfg`` (the callback)."""
    if "hydra" in cfg:
        with _hydra_config(cfg, keep=keep_hydra_config) as hydra:
            task = copy.deepcopy(cfg)
            with read_write(task), open_dict(task):
                del task["hydra"]
            _check(task, hydra, config_name or hydra.job.get("config_name"))
        return
    hydra = HydraConfig.get() if HydraConfig.initialized() else None
    _check(cfg, hydra, config_name or (hydra.job.get("config_name") if hydra is not None else None))


def _check(cfg: DictConfig, hydra: Any, config_name: str | None) -> None:
    if str(config_name) == "predict" and cfg.get("model") is not None and cfg.get("ckpt"):
        target = OmegaConf.select(cfg, "model._target_", default=None, throw_on_resolution_failure=False)
        if target != "strokelab.tasks.threshold.ThresholdBaseline":  # predict.py's own rule, said before the walk
            raise ConfigError(
                "model",
                "is set with a checkpoint: the checkpoint carries its own model config",
                "drop model=..., or use model=threshold",
            )
    walk = _Walk(Sources.from_hydra(hydra))
    schema = SCHEMAS.get(str(config_name))
    if schema is None:
        walk.walk(cfg, "")
    else:
        allowed: list[str] = []
        if walk.sources.primary is not None:
            try:
                allowed = [str(k) for k in OmegaConf.load(walk.sources.primary) if k != "defaults"]
            except Exception:
                allowed = []
        walk.schema(cfg, schema, "", allowed)
    problems = walk.lines()
    if problems:
        lines = problems[:MAX_PROBLEMS]
        if len(problems) > MAX_PROBLEMS:
            lines.append(f"... and {len(problems) - MAX_PROBLEMS} more config problems")
        raise ConfigError(None, "\n".join(lines))


def override_error_line(err: BaseException) -> str | None:
    """One line for Hydra's refusal of an override of a key that is not in the config (``trainer.max_epoch=3``):
    for a ``_target_`` node, the target's parameters, as :func:`check_config` says it; None for other errors."""
    cause = err.__cause__
    key, parent = getattr(cause, "full_key", None), getattr(cause, "parent_node", None)
    if not key or not isinstance(parent, DictConfig) or "Could not override" not in str(err):
        return None
    name = str(getattr(cause, "key", key.rsplit(".", 1)[-1]))
    target = parent._get_node("_target_")._value() if "_target_" in parent else None
    if isinstance(target, str) and not OmegaConf.is_interpolation(parent, "_target_"):
        try:
            spec = signature_spec(target)
        except Exception:
            spec = None
        if spec is not None and name in spec.params:
            append = re.search(r"use (\+\S+)", str(err))
            return (
                f"config key {key}: is not set in the config, so it cannot be overridden ({name} is a parameter of "
                f"{target}: add it with {append.group(1) if append else f'+{key}=...'})"
            )
        if spec is not None and not spec.open:
            return f"config key {key}: not a parameter of {target} ({_param_list(spec, name)}); fix the key on the command line"
    keys = [str(k) for k in parent.keys()]
    close = difflib.get_close_matches(name, keys, n=1)
    mean = f"did you mean {close[0]}? " if close else ""
    where = f"a key of {key.rsplit('.', 1)[0]}" if "." in key else "a top-level key"
    shown = ", ".join(keys[:MAX_LISTED]) + (", ..." if len(keys) > MAX_LISTED else "")
    return f"config key {key}: not {where} ({mean}keys: {shown}); fix the key on the command line"


def sweep_jobs(config: DictConfig) -> list[list[str]] | None:
    """Overrides of a few jobs of a multirun (Hydra's basic sweeper) that together take every swept value once:
    the first value of every sweep, then each other value of one sweep at a time (not the whole product).
    None for another sweeper or a sweep that is not a list of values."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    sweeper = config.hydra.get("sweeper")
    if sweeper is None or sweeper.get("_target_") != "hydra._internal.core_plugins.basic_sweeper.BasicSweeper":
        return None
    params = [f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()]
    task = OmegaConf.to_container(config.hydra.overrides.task, resolve=False)
    items: list[tuple[str, list[str]]] = []
    for override in OverridesParser.create().parse_overrides([*params, *map(str, task)]):  # type: ignore[arg-type]
        key = override.get_key_element()
        if override.is_sweep_override():
            if not override.is_discrete_sweep():
                return None
            items.append((key, [f"{key}={v}" for v in override.sweep_string_iterator()]))
        else:
            items.append((key, [f"{key}={override.get_value_element_as_str()}"]))
    first = [values[0] for _, values in items]
    jobs = [first]
    for i, (_, values) in enumerate(items):
        jobs += [[*first[:i], value, *first[i + 1 :]] for value in values[1:]]
    return jobs


def composition_error_line(err: BaseException) -> str:
    """Hydra's multi-line composition error in one line: an unknown key names the key (and, for a ``_target_``
    node, the target's parameters); other errors keep their text, lines joined."""
    line = override_error_line(err)
    if line is not None:
        return line
    parts: list[str] = []
    for raw in str(err).split("\n"):
        if raw.startswith("Config search path"):
            break
        text = " ".join(raw.split())
        if not text:
            continue
        if raw.startswith("\t") and parts and not parts[-1].endswith(":"):
            parts[-1] += f", {text}"  # an indented list (Hydra's available options)
        elif raw.startswith("\t") and parts:
            parts[-1] += f" {text}"
        else:
            parts.append(text)
    head, rest = (parts[0] if parts else type(err).__name__), parts[1:]
    return f"config: {head}" + (f" ({'; '.join(rest)})" if rest else "")


class ConfigCheckCallback(Callback):
    """Hydra callback (``hydra.callbacks.config_check`` in ``conf/hydra/default.yaml``): :func:`check_config`
    right after composition, before Hydra creates the run or sweep directory, so a bad config leaves nothing
    behind. A multirun checks the config of a few jobs that together take every swept value
    (:func:`sweep_jobs`), so that a bad value does not stop the sweep after the jobs before it have run; each
    job checks its own again (``strokelab.entry.check_job_config``)."""

    def on_run_start(self, config: DictConfig, config_name: str | None = None, **kwargs: Any) -> None:
        self._check(config, config_name, multirun=False)

    def on_multirun_start(self, config: DictConfig, config_name: str | None = None, **kwargs: Any) -> None:
        self._check(config, config_name, multirun=True)

    @staticmethod
    def _check(config: DictConfig, config_name: str | None, multirun: bool) -> None:
        from strokelab.entry import exit_with, is_secondary_rank, mark_composed

        mark_composed()
        if is_secondary_rank():
            return
        try:
            if not multirun:
                check_config(config, config_name, keep_hydra_config=True)
            else:
                _check_sweep(config, config_name)
        except ConfigError as err:
            exit_with(err)
        except Exception as err:  # a fault of the check itself must not stop a run: the job checks again
            log.warning("the config check failed (%s: %s); the job checks again", type(err).__name__, err)
            return
        mark_composed(run_checked=not multirun)


def _check_sweep(config: DictConfig, config_name: str | None) -> None:
    """Check the jobs of :func:`sweep_jobs` (the base config for another sweeper); every problem once."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException

    with _hydra_config(config, keep=True):  # the sweeper resolves hydra.sweep.dir with it
        pass
    jobs = sweep_jobs(config)
    if jobs is None:
        check_config(config, config_name)
        return
    loader = GlobalHydra.instance().config_loader()
    lines: list[str] = []
    seen: set[str] = set()  # a problem shared by several jobs (each its own override) is said once
    for overrides in jobs:
        try:
            job = loader.load_sweep_config(config, overrides)
        except (HydraException, OmegaConfBaseException) as err:
            raise ConfigError(None, composition_error_line(err)) from None
        try:
            check_config(job, config_name)
        except ConfigError as err:
            for line in str(err).splitlines():
                if line.split("; fix ", 1)[0] not in seen:
                    seen.add(line.split("; fix ", 1)[0])
                    lines.append(line)
    if lines:
        raise ConfigError(None, "\n".join(lines[:MAX_PROBLEMS]))
