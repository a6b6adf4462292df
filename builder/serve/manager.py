"""Aspired versions -> loaded servables, and the state of every version (START ... END).

Why availability-preserving: TF Serving's default ``AvailabilityPreservingPolicy`` loads a new
version before unloading the old one, so "latest" requests always find a version during a roll;
clients of the local server get the same guarantee. A failed load is retried at later polls up to
``MAX_LOAD_RETRIES`` times (TF Serving's ``--max_num_load_retries``), then not again while the
directory stays on disk.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any  # bf16 hook (issue 12)

from builder.config.models_config import ModelEntry
from builder.serve.servable import Servable
from builder.serve.status import RpcStatus

MAX_LOAD_RETRIES = 5  # tensorflow_model_server --max_num_load_retries default


@dataclass
class VersionState:
    state: str = "START"  # START | LOADING | AVAILABLE | UNLOADING | END
    error_code: str = "OK"
    error_message: str = ""


@dataclass
class _ModelRuntime:
    entry: ModelEntry
    labels: dict[str, int] = field(default_factory=dict)
    failures: dict[int, int] = field(default_factory=dict)  # version -> failed load attempts


class ModelManager:
    """Aspired versions -> loaded servables, as TF Serving's AspiredVersionsManager with the
    availability-preserving policy: new versions load before old ones unload, so "latest"
    requests always find a version during a roll."""

    def __init__(self, log: logging.Logger, enable_warmup: bool = True, method_check: bool = False,
                 session_config: Any = None) -> None:
        self.log = log
        self.session_config = session_config  # bf16 hook (issue 12): for every model, as TF Serving
        self.enable_warmup = enable_warmup
        self.method_check = method_check
        self._lock = threading.Lock()  # guards the maps below; never held while loading
        self._reconcile = threading.RLock()  # one reconcile at a time
        self._models: dict[str, _ModelRuntime] = {}
        self._states: dict[str, dict[int, VersionState]] = {}
        self._servables: dict[str, dict[int, Servable]] = {}
        self._warned: set[str] = set()

    # -- requests --------------------------------------------------------------------------------
    def acquire(self, name: str, version: int | None = None, label: str | None = None) -> Servable:
        """A servable for a request (call ``release`` on it). Errors as ServerCore reports them."""
        with self._lock:
            model = self._models.get(name)
            if label:
                if model is None or label not in model.labels:
                    raise RpcStatus("INVALID_ARGUMENT", f"Unrecognized servable version label: {label}")
                version = model.labels[label]
            loaded = self._servables.get(name, {})
            if version is None:
                s = loaded[max(loaded)] if loaded else None
                what = f"Latest({name})"
            else:
                s = loaded.get(version)
                what = f"Specific({name}, {version})"
            if s is None or not s.acquire():
                raise RpcStatus("NOT_FOUND", f"Servable not found for request: {what}")
            return s

    def status(self, name: str, version: int | None = None, label: str | None = None) -> list[tuple[int, VersionState]]:
        with self._lock:
            if label:
                model = self._models.get(name)
                if model is None or label not in model.labels:
                    raise RpcStatus("INVALID_ARGUMENT", f"Unrecognized servable version label: {label}")
                version = model.labels[label]
            states = self._states.get(name, {})
            if version is not None:
                if version not in states:
                    raise RpcStatus("NOT_FOUND", f"Could not find version {version} of model {name}")
                return [(version, VersionState(**vars(states[version])))]
            if not states:
                raise RpcStatus("NOT_FOUND", f"Could not find any versions of model {name}")
            return [(v, VersionState(**vars(s))) for v, s in sorted(states.items(), reverse=True)]

    def has_model(self, name: str) -> bool:
        """Whether ``name`` is a configured model (metrics give only those their own series)."""
        with self._lock:
            return name in self._models

    def entries(self) -> list[ModelEntry]:
        with self._lock:
            return [m.entry for m in self._models.values()]

    # -- changes ---------------------------------------------------------------------------------
    def apply_config(self, entries: list[ModelEntry], strict: bool = False) -> list[str]:
        """Make ``entries`` the served set: add/update models, unload removed ones. Returns error
        messages (load failures, bad labels); with ``strict`` a label error raises instead."""
        with self._reconcile:
            new = {e.name: e for e in entries}
            errors: list[str] = []
            with self._lock:
                removed = [n for n in self._models if n not in new]
                for name, e in new.items():
                    if name in self._models:
                        self._models[name].entry = e
                    else:
                        self._models[name] = _ModelRuntime(e)
                        self._states.setdefault(name, {})
                        self._servables.setdefault(name, {})
            for name in removed:
                self.log.info("Model %s is no longer in the config: unloading all its versions", name)
                self._unload(name, list(self._servables.get(name, {})))
                with self._lock:
                    del self._models[name]
            for name in new:
                errors += self._reconcile_model(name)
            for name, e in new.items():
                err = self._apply_labels(name, e)
                if err:
                    if strict:
                        raise RpcStatus("FAILED_PRECONDITION", err)
                    errors.append(err)
            return errors

    def poll(self) -> list[str]:
        """Re-scan every base path (the file system poll)."""
        with self._reconcile:
            errors = []
            for name in list(self._models):
                errors += self._reconcile_model(name)
            return errors

    def _reconcile_model(self, name: str) -> list[str]:
        with self._lock:
            model = self._models.get(name)
            if model is None:
                return []
            entry = model.entry
            loaded = set(self._servables[name])
        paths = entry.version_paths(self._warn_once)
        disk = sorted(paths)
        if not disk:
            self.log.warning("No versions of servable %s found under base path %s", name, entry.base_path)
        aspired = set(entry.aspired(disk))
        if entry.policy == "specific" and set(entry.versions) - set(disk):
            self.log.warning("versions %s of model %s are in the config but not on disk",
                             sorted(set(entry.versions) - set(disk)), name)
        for v in list(model.failures):
            if v not in disk:
                del model.failures[v]  # a version dir that reappears gets fresh attempts
        errors = []
        for v in sorted(aspired - loaded, reverse=True):
            if model.failures.get(v, 0) > MAX_LOAD_RETRIES:
                continue
            err = self._load(name, v, str(paths[v]))
            if err:
                model.failures[v] = model.failures.get(v, 0) + 1
                errors.append(err)
        self._unload(name, sorted(loaded - aspired))
        return errors

    def _warn_once(self, message: str) -> None:
        """Polls repeat every second; a standing problem (duplicate version names) is logged once."""
        if message not in self._warned:
            self._warned.add(message)
            self.log.warning("%s", message)

    def _set_state(self, name: str, version: int, state: str, code: str = "OK", msg: str = "") -> None:
        with self._lock:
            self._states.setdefault(name, {})[version] = VersionState(state, code, msg)

    def _load(self, name: str, version: int, path: str) -> str:
        self._set_state(name, version, "LOADING")
        self.log.info("Loading servable version {name: %s version: %d}", name, version)
        t0 = time.monotonic()
        s = Servable(name, version, path, self.log, self.method_check, self.session_config)  # bf16 hook
        try:
            s.load(self.enable_warmup)
        except RpcStatus as e:
            if s.session is not None:
                s.close(0)
            self._set_state(name, version, "END", e.code, e.message)
            self.log.error("Loading servable {name: %s version: %d} failed: %s", name, version, e.message)
            return f"{name} version {version}: {e.message}"
        with self._lock:
            if name not in self._models:  # model removed from the config while loading
                s.close(0)
                self._states[name][version] = VersionState("END")
                return ""
            self._servables[name][version] = s
            self._states[name][version] = VersionState("AVAILABLE")
        self.log.info("Successfully loaded servable version {name: %s version: %d} in %.2f s "
                      "(%d warmup records)", name, version, time.monotonic() - t0, s.warmup_records)
        return ""

    def _unload(self, name: str, versions: list[int]) -> None:
        gone = []
        with self._lock:
            for v in versions:
                s = self._servables.get(name, {}).pop(v, None)
                if s is not None:
                    self._states[name][v] = VersionState("UNLOADING")
                    gone.append(s)
        for s in gone:
            s.close()
            self._set_state(name, s.version, "END")
            self.log.info("Unloaded servable version {name: %s version: %d}", name, s.version)

    def _apply_labels(self, name: str, entry: ModelEntry) -> str:
        with self._lock:
            loaded = self._servables.get(name, {})
            for _label, v in entry.labels:
                if v not in loaded:
                    return (f"Request to assign label to version {v} of model {name}, which is not "
                            "currently available for inference")
            self._models[name].labels = dict(entry.labels)
        return ""

    def shutdown(self) -> None:
        with self._reconcile:
            for name in list(self._servables):
                self._unload(name, list(self._servables[name]))
