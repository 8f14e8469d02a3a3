"""The model registry: fitted forecasters saved in a safe format, versioned, with a champion.

What is saved, and why it is safe
---------------------------------
Nothing is pickled: loading a pickle runs whatever code the file names, so a registry on a
shared disk would be a way in. A version is a directory of plain data:

- ``meta.json``: format, version, name, creation time, the `ForecasterConfig`, the ensemble
  weights, the backtest scores, the conformal half-widths, the data window (per segment: start,
  step, length) and what the LightGBM model needs besides its trees (lags, event types);
- ``data.csv``: the data window itself, long format (``segment,timestamp,value``), readable
  by `CsvSource`;
- ``events.json``: the calendar the forecaster was fitted with;
- ``lightgbm.txt``: the booster in LightGBM's own text format (trees as numbers).

statsforecast models are *refitted from the saved data window* on load rather than
serialised: their fits are deterministic, so the same window gives the same model, and the
cost is seconds. LightGBM's trees are loaded as they were (refitting is also deterministic with
the saved seed, but slower). Layout::

    <root>/<name>/v<N>/{meta.json,data.csv,events.json,lightgbm.txt}
    <root>/<name>/champion.json          {"version": N}
    <root>/promotions.jsonl              one JSON line per promotion, never rewritten

A version appears complete or not at all: it is written to a hidden staging directory and
renamed to ``v<N>`` (see `Registry.save`).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import secrets
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd

from connwise import __version__
from connwise.errors import ConfigError
from connwise.forecast.backtest import Scores
from connwise.forecast.events import Event, EventCalendar
from connwise.forecast.forecaster import Forecaster, ForecasterConfig
from connwise.forecast.gbm import LightGBMModel
from connwise.forecast.models import make_model
from connwise.forecast.series import CsvSource

log = logging.getLogger("connwise.forecast.registry")

FORMAT = 1
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class Registry:
    """Versions of fitted forecasters under `root`; see the module docstring."""

    def __init__(self, root: str | Path, *, wall_clock: Callable[[], float] = time.time) -> None:
        self.root = Path(root)
        self._now = wall_clock

    def _dir(self, name: str) -> Path:
        if not NAME_PATTERN.match(name):
            raise ConfigError("registry.name", name, "a forecaster name is letters, digits, "
                              "'.', '_' or '-' (up to 64)", "rename it")
        return self.root / name

    def versions(self, name: str) -> list[int]:
        base = self._dir(name)
        if not base.is_dir():
            return []
        return sorted(int(p.name[1:]) for p in base.iterdir()
                      if p.is_dir() and re.fullmatch(r"v\d+", p.name))

    def save(self, name: str, forecaster: Forecaster, *, promote: bool | None = None) -> int:
        """Save `forecaster` as the next version of `name`; returns the version. `promote`:
        make it champion (default: only if `name` has no champion yet).

        The files are written to a hidden staging directory that is renamed to ``v<N>`` when
        complete: a save that fails or is interrupted leaves no version behind, and two
        processes saving at once get different versions (the rename refuses an existing one,
        and the loser takes the next). Raises `ConfigError` when the registry is unwritable."""
        if not forecaster.models:
            raise ConfigError("registry.save", name, "the forecaster is not fitted",
                              "fit it before saving")
        base = self._dir(name)
        try:
            base.mkdir(parents=True, exist_ok=True)
            staging = base / f".saving-{os.getpid()}-{secrets.token_hex(4)}"
            staging.mkdir()
        except OSError as exc:
            raise self._unwritable(name, exc) from exc
        try:
            meta = self._write(staging, name, forecaster)
            version = self._publish(staging, base, meta)
        except BaseException as exc:
            shutil.rmtree(staging, ignore_errors=True)
            if isinstance(exc, OSError):
                raise self._unwritable(name, exc) from exc
            raise
        log.info("registry %s: saved %s v%d", self.root, name, version)
        if promote or (promote is None and self.champion(name) is None):
            self.promote(name, version, reason="first version" if promote is None else
                         "promoted on save")
        return version

    def _unwritable(self, name: str, exc: OSError) -> ConfigError:
        return ConfigError("registry", str(self.root), f"cannot save {name} there "
                           f"({exc.strerror or exc})", "give a writable directory with free "
                           "space as --registry")

    def _write(self, target: Path, name: str, forecaster: Forecaster) -> dict[str, Any]:
        """Write everything but meta.json into `target`; returns the metadata to write."""
        rows = []
        for series in forecaster.panel:
            stamps = pd.to_datetime(series.times(), unit="s").strftime("%Y-%m-%dT%H:%M:%SZ")
            rows.append(pd.DataFrame({"segment": series.segment, "timestamp": stamps,
                                      "value": series.values}))
        pd.concat(rows).to_csv(target / "data.csv", index=False)
        events = forecaster.events.to_list() if forecaster.events else []
        (target / "events.json").write_text(json.dumps(events, indent=1))
        meta: dict[str, Any] = {
            "format": FORMAT, "connwise": __version__, "name": name, "version": None,
            "created": self._now(), "config": forecaster.config.to_dict(),
            "weights": forecaster.weights, "combination": forecaster.combination,
            "scores": {k: v.to_dict() for k, v in forecaster.scores.items()},
            "widths": {m: {str(lv): w.tolist() for lv, w in ws.items()}
                       for m, ws in forecaster.widths.items()},
            "window": {s.segment: {"start": s.start, "step": s.step, "length": len(s),
                                   "filled": s.filled} for s in forecaster.panel},
        }
        gbm = forecaster.models.get("lightgbm")
        if isinstance(gbm, LightGBMModel):
            (target / "lightgbm.txt").write_text(gbm.booster_text())
            meta["lightgbm"] = {"used_lags": gbm.used_lags, "event_types": gbm.event_types}
        return meta

    def _publish(self, staging: Path, base: Path, meta: dict[str, Any]) -> int:
        """Rename `staging` to the next free ``v<N>`` (meta.json, naming N, written first)."""
        version = (self.versions(meta["name"]) or [0])[-1] + 1
        while True:
            meta["version"] = version
            (staging / "meta.json").write_text(json.dumps(meta, indent=1,
                                                          default=_json_default))
            target = base / f"v{version}"
            try:
                staging.rename(target)  # atomic; refuses a non-empty target
            except OSError:
                if not target.exists():
                    raise
                version += 1  # another process took it first
                continue
            return version

    def meta(self, name: str, version: int) -> dict[str, Any]:
        path = self._dir(name) / f"v{version}" / "meta.json"
        if not path.is_file():
            raise ConfigError("registry.version", f"{name} v{version}", f"there is no such "
                              f"version in {self.root} (versions: {self.versions(name)})",
                              "fit one with `connwise forecast fit` or pick an existing one")
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise _damaged(name, version, path, exc) from exc
        if not isinstance(data, dict):
            raise _damaged(name, version, path, TypeError("not a JSON object"))
        if data.get("format") != FORMAT:
            raise ConfigError("registry.format", data.get("format"), f"{path} was written in "
                              "another registry format", f"refit it with connwise {__version__}")
        return data

    def load(self, name: str, version: int | None = None) -> Forecaster:
        """The forecaster `name` at `version` (default: the champion), ready to predict.
        Raises `ConfigError` naming the version when its files are missing or damaged."""
        if version is None:
            version = self.champion(name)
            if version is None:
                raise ConfigError("registry.name", name, f"{self.root} has no champion for "
                                  "this name", "fit one with `connwise forecast fit`")
        meta = self.meta(name, version)
        base = self._dir(name) / f"v{version}"
        try:
            return self._restore(base, meta)
        except (OSError, ValueError, KeyError, TypeError, AttributeError,
                lgb.basic.LightGBMError) as exc:  # ConfigError included: it is a ValueError
            raise _damaged(name, version, base, exc) from exc

    def _restore(self, base: Path, meta: dict[str, Any]) -> Forecaster:
        config = ForecasterConfig.from_dict(meta["config"])
        forecaster = Forecaster(config)
        source = CsvSource(base / "data.csv")
        forecaster.panel = [source.series(segment) for segment in meta["window"]]
        events = EventCalendar(Event(**e) for e in json.loads((base / "events.json").read_text()))
        forecaster.events = events if len(events) else None
        forecaster.weights = {k: float(v) for k, v in meta["weights"].items()}
        forecaster.combination = str(meta.get("combination", "mean"))
        forecaster.widths = {m: {int(lv): np.asarray(w, dtype=float) for lv, w in ws.items()}
                             for m, ws in meta["widths"].items()}
        forecaster.scores = {k: Scores(**v) for k, v in meta["scores"].items()}
        for name_ in config.models:
            model = make_model(name_, **dict(config.model_params.get(name_, {})))
            if isinstance(model, LightGBMModel):
                model.restore((base / "lightgbm.txt").read_text(), forecaster.panel,
                              forecaster.events, meta["lightgbm"]["event_types"],
                              meta["lightgbm"]["used_lags"])
            else:
                model.fit(forecaster.panel, forecaster.events)
            forecaster.models[name_] = model
        return forecaster

    def champion(self, name: str) -> int | None:
        path = self._dir(name) / "champion.json"
        if not path.is_file():
            return None
        try:
            return int(json.loads(path.read_text())["version"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError("registry.champion", str(path), f"the champion record of {name} "
                              f"is damaged ({exc})", "promote a version: fit with --promote, "
                              "or call Registry.promote()") from exc

    def promote(self, name: str, version: int, *, reason: str,
                details: dict[str, Any] | None = None) -> None:
        """Make `version` the champion of `name`, and log the promotion (a JSON line in
        promotions.jsonl and a log record)."""
        self.meta(name, version)  # it must exist
        try:
            previous = self.champion(name)
        except ConfigError:
            previous = None  # a damaged record is what a promotion repairs
        path = self._dir(name) / "champion.json"
        # A name of its own: two processes promoting at once must not share a temporary file.
        tmp = path.with_name(f".champion-{os.getpid()}-{secrets.token_hex(4)}.tmp")
        record = {"time": self._now(), "name": name, "version": version,
                  "previous": previous, "reason": reason, **(details or {})}
        try:
            tmp.write_text(json.dumps({"version": version}))
            tmp.replace(path)
            with (self.root / "promotions.jsonl").open("a") as handle:
                handle.write(json.dumps(record, default=_json_default) + "\n")
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise ConfigError("registry", str(self.root), f"cannot promote {name} v{version} "
                              f"there ({exc.strerror or exc})", "give a writable directory") \
                from exc
        log.warning("registry %s: %s v%d promoted (was %s): %s", self.root, name, version,
                    f"v{previous}" if previous else "none", reason)

    def promotions(self) -> list[dict[str, Any]]:
        path = self.root / "promotions.jsonl"
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _damaged(name: str, version: int, path: Path, exc: BaseException) -> ConfigError:
    return ConfigError("registry.version", f"{name} v{version}", f"{path} is damaged or "
                       f"incomplete ({type(exc).__name__}: {exc})", "refit it with `connwise "
                       "forecast fit`, or pick another version")


def _json_default(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, dt.datetime):
        return value.isoformat()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")
