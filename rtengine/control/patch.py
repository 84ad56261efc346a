"""Patches: YAML files naming the audio config, source, stages, output, OSC
settings and automation; validated completely before anything starts.

Every error is one line naming the file, the key path and what was expected::

    patches/bad.yaml: stages[1].params.gain: expected a number in [-48, 12] dB, got 'loud'

Format (see ``patches/vocode.yaml``)::

    config: 22k                       # audio config name
    source: {type: example, seconds: 8}   # example | file | input | mel_file | mel_stream
    stages:
      - {type: mel, params: {eq: [0, 0, 0, 0, 0, 0, 0, 0]}}
      - {type: vocoder, model: pgvoc-22k, params: {gain: 0}}   # model: pghi for the model-free one
    output: {gain: -3, ceiling: -1, release: 150}
    osc:
      host: 127.0.0.1
      port: 9000
      query_port: 9001                # OSCQuery HTTP (0: none)
      reply_port: null                # echo to the sender's port unless set
      aliases: {/1/fader1: output.gain}
    automation:
      - {t: 2.0, param: output.gain, value: -12, ramp: 0.5}
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..config import CONFIGS, get_config
from ..errors import UserError
from .params import parse_param_path

TOP_KEYS = ("name", "description", "config", "seed", "source", "stages", "output", "osc",
            "automation")
OSC_KEYS = ("host", "port", "query_port", "reply_port", "aliases")
OUTPUT_PARAMS = ("gain", "ceiling", "release")
DEFAULT_OSC_PORT = 9000


class PatchError(UserError):
    pass


@dataclass
class Patch:
    path: Path
    data: dict
    config: str = "22k"
    seed: int = 0
    osc_host: str = "127.0.0.1"
    osc_port: int = DEFAULT_OSC_PORT
    query_port: int | None = None
    reply_port: int | None = None
    aliases: dict = field(default_factory=dict)

    @property
    def cfg(self):
        return get_config(self.config)

    @property
    def base_dir(self) -> Path:
        return self.path.parent


def _type_name(v) -> str:
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, (int, float)):
        return "a number"
    if isinstance(v, str):
        return f"{v!r}"
    if isinstance(v, list):
        return "a list"
    if isinstance(v, dict):
        return "a mapping"
    if v is None:
        return "nothing"
    return type(v).__name__


class _Checker:
    def __init__(self, path: Path):
        self.file = path

    def fail(self, key: str, msg: str):
        raise PatchError(f"{self.file}: {key}: {msg}" if key else f"{self.file}: {msg}")

    def mapping(self, v, key, allowed=None, required=()):
        if not isinstance(v, dict):
            self.fail(key, f"expected a mapping, got {_type_name(v)}")
        for k in v:
            if not isinstance(k, str):
                self.fail(key, f"keys must be strings, got {k!r}")
            if allowed is not None and k not in allowed:
                self.fail(f"{key}.{k}" if key else k,
                          f"unknown key; expected one of: {', '.join(allowed)}")
        for k in required:
            if k not in v:
                self.fail(key or "(top level)", f"missing key '{k}'")
        return v

    def number(self, v, key, lo=None, hi=None, unit=""):
        rng = ""
        if lo is not None and hi is not None:
            rng = f" in [{lo:g}, {hi:g}]" + (f" {unit}" if unit else "")
        elif lo is not None:
            rng = f" >= {lo:g}"
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            self.fail(key, f"expected a number{rng}, got {_type_name(v)}")
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            self.fail(key, f"expected a number{rng}, got {v:g}")
        return float(v)

    def integer(self, v, key, lo=None, hi=None):
        if isinstance(v, bool) or not isinstance(v, int):
            self.fail(key, f"expected an integer, got {_type_name(v)}")
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            self.fail(key, f"expected an integer in [{lo}, {hi}], got {v}")
        return v

    def string(self, v, key, choices=None):
        if not isinstance(v, str):
            self.fail(key, f"expected a string, got {_type_name(v)}")
        if choices is not None and v not in choices:
            self.fail(key, f"expected one of: {', '.join(choices)}; got {v!r}")
        return v

    def options(self, v, key, schema: dict):
        self.mapping(v, key, allowed=tuple(schema))
        for k, val in v.items():
            types, desc = schema[k]
            ok = isinstance(val, types) and not (isinstance(val, bool) and bool not in types)
            if val is None:
                ok = True
            if not ok:
                names = " or ".join({int: "an integer", float: "a number", str: "a string",
                                     bool: "a boolean"}[t] for t in types)
                self.fail(f"{key}.{k}", f"expected {names} ({desc}), got {_type_name(val)}")
        return v


def load_patch(path: str | os.PathLike) -> Patch:
    """Read and validate a patch file (structure, stages, params, OSC, automation)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such patch file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read patch ({e})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise PatchError(f"{path}: invalid YAML{where}: {problem}") from None
    return validate_patch(data, path)


def validate_patch(data, path: str | os.PathLike = "<patch>") -> Patch:
    from ..stages import SOURCE_TYPES, STAGE_TYPES, VOCODER_MODELS
    from ..stages.vocoder import DEFAULT_VOCODER, VOCODER_OPTIONS

    path = Path(path)
    c = _Checker(path)
    if data is None:
        c.fail("", "the patch is empty; expected a mapping with 'source' and 'stages'")
    c.mapping(data, "", allowed=TOP_KEYS, required=("source", "stages"))
    patch = Patch(path=path, data=data)
    if "config" in data:
        patch.config = c.string(data["config"], "config", tuple(CONFIGS))
    if "seed" in data:
        patch.seed = c.integer(data["seed"], "seed", 0, 2**32 - 1)
    src = c.mapping(data["source"], "source", required=("type",))
    st = c.string(src["type"], "source.type", tuple(SOURCE_TYPES))
    cls = SOURCE_TYPES[st]
    c.options({k: v for k, v in src.items() if k != "type"}, "source", cls.options_schema)
    for k in getattr(cls, "required_options", ()):
        if k not in src:
            c.fail("source", f"missing key '{k}' (needed by source type {st})")
    stages = data["stages"]
    if not isinstance(stages, list) or not stages:
        c.fail("stages", f"expected a non-empty list of stages, got {_type_name(stages)}")
    for i, s in enumerate(stages):
        key = f"stages[{i}]"
        c.mapping(s, key, allowed=("type", "name", "model", "options", "params"),
                  required=("type",))
        t = c.string(s["type"], f"{key}.type",
                     tuple(n for n in STAGE_TYPES if n != "output"))
        if "name" in s:
            c.string(s["name"], f"{key}.name")
            if s["name"] in ("output", "source", "patch", "panic"):
                c.fail(f"{key}.name", f"the name {s['name']!r} is reserved")
        if t == "vocoder":
            model = c.string(s.get("model", DEFAULT_VOCODER), f"{key}.model", tuple(VOCODER_MODELS))
            c.options(s.get("options") or {}, f"{key}.options", VOCODER_OPTIONS.get(model, {}))
        else:
            if "model" in s:
                c.fail(f"{key}.model", f"stage type {t!r} takes no model")
            c.options(s.get("options") or {}, f"{key}.options",
                      getattr(STAGE_TYPES[t], "options_schema", {}))
        if "params" in s and s["params"] is not None:
            c.mapping(s["params"], f"{key}.params")
    if "output" in data and data["output"] is not None:
        c.mapping(data["output"], "output", allowed=OUTPUT_PARAMS)
    osc = data.get("osc") or {}
    c.mapping(osc, "osc", allowed=OSC_KEYS)
    if "host" in osc:
        patch.osc_host = c.string(osc["host"], "osc.host")
    if "port" in osc:
        patch.osc_port = c.integer(osc["port"], "osc.port", 0, 65535)
    if osc.get("query_port") is not None:
        patch.query_port = c.integer(osc["query_port"], "osc.query_port", 0, 65535)
    if osc.get("reply_port") is not None:
        patch.reply_port = c.integer(osc["reply_port"], "osc.reply_port", 1, 65535)
    aliases = osc.get("aliases") or {}
    c.mapping(aliases, "osc.aliases")
    for a, target in aliases.items():
        if not a.startswith("/") or " " in a:
            c.fail(f"osc.aliases.{a}", "an OSC address must start with '/' and have no spaces")
        c.string(target, f"osc.aliases.{a}")
    patch.aliases = dict(aliases)
    auto = data.get("automation") or []
    if not isinstance(auto, list):
        c.fail("automation", f"expected a list of events, got {_type_name(auto)}")
    for i, e in enumerate(auto):
        key = f"automation[{i}]"
        c.mapping(e, key, allowed=("t", "param", "value", "ramp"), required=("t", "param", "value"))
        c.number(e["t"], f"{key}.t", 0)
        c.string(e["param"], f"{key}.param")
        c.number(e["value"], f"{key}.value")
        if "ramp" in e:
            c.number(e["ramp"], f"{key}.ramp", 0)
    # building the engine checks stage params, alias and automation targets
    build_engine(patch, dry=True)
    return patch


def _resolve(patch: Patch, p) -> str:
    q = Path(p)
    return str(q if q.is_absolute() else patch.base_dir / q)


def build_engine(patch: Patch, seed: int | None = None, overrides=(), dry: bool = False):
    """Construct the :class:`~rtengine.engine.Engine` of a validated patch.

    ``overrides``: ``[(param path, value)]`` applied after the patch values
    (``--set``). ``dry``: construct only, to validate (nothing is loaded)."""
    from ..engine.chain import AutomationEvent, Engine
    from ..stages import SOURCE_TYPES, STAGE_TYPES
    from ..stages.vocoder import DEFAULT_VOCODER

    c = _Checker(patch.path)
    data = patch.data
    cfg = patch.cfg
    seed = patch.seed if seed is None else seed
    src = dict(data["source"])
    stype = src.pop("type")
    for k in ("path",):
        if k in src and isinstance(src[k], str):
            src[k] = _resolve(patch, src[k])
    try:
        source = SOURCE_TYPES[stype]("source", cfg, src, seed)
    except UserError as e:
        c.fail("source", str(e))
    stages = []
    for i, s in enumerate(data["stages"]):
        t = s["type"]
        name = s.get("name", t)
        try:
            if t == "vocoder":
                st = STAGE_TYPES[t](name, cfg, s.get("options") or {}, seed,
                                    model=s.get("model", DEFAULT_VOCODER))
            else:
                st = STAGE_TYPES[t](name, cfg, s.get("options") or {}, seed)
        except UserError as e:
            c.fail(f"stages[{i}]", str(e))
        _apply_params(c, st, s.get("params") or {}, f"stages[{i}].params")
        stages.append(st)
    out = STAGE_TYPES["output"]("output", cfg, {}, seed)
    _apply_params(c, out, data.get("output") or {}, "output")
    stages.append(out)
    try:
        engine = Engine(cfg, source, stages)
    except UserError as e:
        c.fail("stages", str(e))
    for a, target in patch.aliases.items():
        try:
            engine.param(target)
        except UserError as e:
            c.fail(f"osc.aliases.{a}", str(e))
    events = []
    for i, e in enumerate(data.get("automation") or []):
        try:
            p, idx = engine.param(e["param"])
        except UserError as err:
            c.fail(f"automation[{i}].param", str(err))
        if p.size is not None and idx is None:
            c.fail(f"automation[{i}].param", f"{e['param']} is a list of {p.size}; "
                                             f"give an index, e.g. {e['param']}[0]")
        c.number(e["value"], f"automation[{i}].value", p.lo, p.hi, p.unit)
        stage, name, _ = parse_param_path(e["param"])
        events.append(AutomationEvent(int(round(float(e["t"]) * cfg.frame_rate)), stage, name,
                                      idx, float(e["value"]), float(e.get("ramp", 0.0))))
    engine.automation = sorted(events, key=lambda ev: ev.frame)
    for path_, value in overrides:
        try:
            p, idx = engine.param(path_)
        except UserError as e:
            raise UserError(f"--set {path_}: {e}") from None
        if p.size is not None and idx is None:
            raise UserError(f"--set {path_}: a list of {p.size}; give an index, e.g. {path_}[0]")
        if not p.lo <= value <= p.hi:
            raise UserError(f"--set {path_}={value:g}: expected a value in "
                            f"[{p.lo:g}, {p.hi:g}] {p.unit}".rstrip())
        p.set(value, idx)
    return engine


def _apply_params(c: _Checker, stage, values: dict, key: str) -> None:
    for name, v in values.items():
        p = stage.params.get(name)
        if p is None:
            c.fail(f"{key}.{name}", f"stage {stage.name!r} ({stage.type_name}) has no parameter "
                                    f"{name!r}; it has: {', '.join(stage.params) or 'none'}")
        if p.size is None:
            p.set(c.number(v, f"{key}.{name}", p.lo, p.hi, p.unit))
        else:
            if not isinstance(v, list) or len(v) != p.size:
                c.fail(f"{key}.{name}", f"expected a list of {p.size} numbers in "
                                        f"[{p.lo:g}, {p.hi:g}] {p.unit}, got {_type_name(v)}"
                                        + (f" of {len(v)}" if isinstance(v, list) else ""))
            for j, x in enumerate(v):
                p.set(c.number(x, f"{key}.{name}[{j}]", p.lo, p.hi, p.unit), j)
        p.reset()


def snapshot_patch(patch: Patch, engine) -> dict:
    """The patch with every parameter at the engine's current value."""
    data = copy.deepcopy(patch.data)
    src = data["source"]
    if isinstance(src.get("path"), str):
        src["path"] = str(Path(_resolve(patch, src["path"])).resolve())
    snap = engine.snapshot()
    for s in data["stages"]:
        name = s.get("name", s["type"])
        if name in snap:
            s["params"] = snap[name]
    data["output"] = snap.get("output", {})
    data.pop("automation", None) if not data.get("automation") else None
    return data


def save_patch(patch: Patch, engine, path: str | os.PathLike) -> Path:
    """Write the current state as a patch YAML, atomically."""
    from ..io import atomic_path

    path = Path(path)
    if path.suffix.lower() not in (".yaml", ".yml"):
        raise UserError(f"{path}: a patch file must end in .yaml or .yml")
    data = snapshot_patch(patch, engine)
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(f"# saved by rtengine from {patch.path.name}\n")
            yaml.safe_dump(data, f, sort_keys=False, default_flow_style=None)
    return path


def default_patch_path() -> Path:
    """The shipped default patch ``vocode.yaml``: inside the package
    (``rtengine/patches``, installed) or the repository's ``patches/``."""
    here = Path(__file__).resolve().parent.parent
    for cand in (here / "patches" / "vocode.yaml", here.parent / "patches" / "vocode.yaml"):
        if cand.exists():
            return cand
    raise UserError("cannot find the default patch vocode.yaml (looked in "
                    f"{here / 'patches'} and {here.parent / 'patches'}); give a PATCH")
