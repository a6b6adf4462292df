"""Aspired versions -> loaded servables, and the state of every version (START ... END).

The manager follows TF Serving 2.17's life-cycle rules, as ``builder/config/lifecycle.py`` states
them (each function there names the TF Serving source it copies), so a repository that serves here
behaves as it will in ``tensorflow_model_server``:

- a config is validated (``validate_config``) and its ``version_labels`` are checked against the
  versions AVAILABLE *before* any model is added (``check_labels``, with
  --allow_version_labels_for_unavailable_models): one refused label rejects the whole config;
- every file-system poll lists each base path as ``FileSystemStoragePathSource`` does
  (``discover_versions`` / ``aspired``: duplicate ``1``/``01`` names, files that parse as
  versions, the version policy); one base path that cannot be listed fails the whole poll;
- loads and unloads are decided by the availability-preserving policy (``next_action``): a new
  version loads before the old one unloads, and if it fails the old one keeps serving;
- a failed load is retried --max_num_load_retries times, --load_retry_interval_micros after each
  failure (``load_attempt_offsets``), then never again while the version stays aspired (its
  directory on disk);
- ``wait_for_models`` is ``WaitUntilModelsAvailable``: the latest aspired version of each model
  must become AVAILABLE; one that fails every attempt is an error, a model with no version keeps
  the caller waiting.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any  # bf16 hook (issue 12)

from builder.config import lifecycle
from builder.config.models_config import ModelEntry
from builder.serve.batching import SharedBatchScheduler
from builder.serve.servable import Servable
from builder.serve.status import RpcStatus


@dataclass
class VersionState:
    state: str = "START"  # START | LOADING | AVAILABLE | UNLOADING | END
    error_code: str = "OK"
    error_message: str = ""


@dataclass
class _Attempts:
    """The failed load attempts of one aspired version (util/retrier.cc ``Retry``)."""

    count: int = 0
    code: str = "OK"
    error: str = ""
    due: float = 0.0  # monotonic time of the next attempt


@dataclass
class _ModelRuntime:
    entry: ModelEntry
    labels: dict[str, int] = field(default_factory=dict)
    aspired: dict[int, str] | None = None  # version -> path from the last good poll; None: not polled
    attempts: dict[int, _Attempts] = field(default_factory=dict)


class ModelManager:
    """TF Serving's AspiredVersionsManager with the availability-preserving policy, for the
    local server: polls, loads, retries, unloads; answers which servable serves a request."""

    def __init__(self, log: logging.Logger, enable_warmup: bool = True, method_check: bool = False,
                 flags: lifecycle.ServerFlags | None = None,
                 batcher: SharedBatchScheduler | None = None, session_config: Any = None) -> None:
        self.log = log
        self.batcher = batcher  # builder.serve.batching scheduler shared by every version (None: off)
        self.session_config = session_config  # bf16 hook (issue 12): for every model, as TF Serving
        self.enable_warmup = enable_warmup
        self.method_check = method_check
        self.flags = flags or lifecycle.ServerFlags()
        self._offsets = lifecycle.load_attempt_offsets(self.flags)
        self._fs_mode = lifecycle.poll_mode(self.flags.file_system_poll_wait_seconds)
        self._next_poll = 0.0
        self._lock = threading.Lock()  # guards the maps below; never held while loading
        self._reconcile = threading.RLock()  # one change (config, poll, retry) at a time
        self._models: dict[str, _ModelRuntime] = {}
        self._states: dict[str, dict[int, VersionState]] = {}
        self._servables: dict[str, dict[int, Servable]] = {}
        self._warned: set[str] = set()
        self._configured = False

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

    # -- config ----------------------------------------------------------------------------------
    def apply_config(self, entries: list[ModelEntry]) -> list[str]:
        """``ServerCore::ReloadConfig``: validate, check labels, then add/update/remove models.

        Raises RpcStatus (INVALID_ARGUMENT, FAILED_PRECONDITION for a refused label) and changes
        nothing when the config is refused. Otherwise returns the names of the models it added,
        which the caller waits for (``wait_for_models``). Base paths are listed at once on the
        first config (unless polling is off) and, when polling is periodic, on every later one
        (the poll TF Serving would run next); with --file_system_poll_wait_seconds 0 later
        configs change labels and remove models but never list a base path again, as in TF
        Serving (serving#1519)."""
        with self._reconcile:
            errors = lifecycle.validate_config(entries)
            if errors:
                raise RpcStatus("INVALID_ARGUMENT", errors[0])
            self._check_labels(entries)
            new = {e.name: e for e in entries}
            with self._lock:
                removed = [n for n in self._models if n not in new]
                added = [n for n in new if n not in self._models]
                for name, e in new.items():
                    model = self._models.setdefault(name, _ModelRuntime(e))
                    model.entry, model.labels = e, dict(e.labels)
                    self._states.setdefault(name, {})
                    self._servables.setdefault(name, {})
            for name in removed:
                self.log.info("Model %s is no longer in the config: unloading all its versions", name)
                self._unload(name, list(self._servables.get(name, {})))
                with self._lock:
                    del self._models[name]
            first, self._configured = not self._configured, True
            if self._fs_mode == "periodic" or (first and self._fs_mode == "once"):
                self.poll()
            elif self._fs_mode == "never" and first:
                self.log.warning("--file_system_poll_wait_seconds < 0: base paths are never listed, "
                                 "so no version loads and start-up waits forever (as in TF Serving)")
            return added

    def _check_labels(self, entries: list[ModelEntry]) -> None:
        """``UpdateModelVersionLabelMap``: labels against the versions AVAILABLE right now."""
        with self._lock:
            for e in entries:
                model = self._models.get(e.name)
                available = [v for v, s in self._states.get(e.name, {}).items() if s.state == "AVAILABLE"]
                errors = lifecycle.check_labels(dict(e.labels), available,
                                                self.flags.allow_version_labels_for_unavailable_models,
                                                model.labels if model else None, e.name)
                if errors:
                    raise RpcStatus("FAILED_PRECONDITION", errors[0])

    # -- polls and retries -----------------------------------------------------------------------
    def poll(self) -> list[str]:
        """One file-system poll of every base path (``PollFileSystemForConfig``), then loads,
        unloads and due retries. A base path that cannot be listed fails the whole poll: no
        model's versions change (TF Serving logs the error and tries again at the next poll)."""
        with self._reconcile:
            self._next_poll = time.monotonic() + max(self.flags.file_system_poll_wait_seconds, 0)
            found: dict[str, dict[int, str]] = {}
            with self._lock:
                models = [(n, m.entry) for n, m in self._models.items()]
            for name, entry in models:
                aspired, error = self._discover(name, entry)
                if error:
                    self.warn_once(f"FileSystemStoragePathSource encountered a filesystem access error: "
                                    f"{error} (no model's versions change until every base path can be listed)")
                    return self._retry_due()
                found[name] = aspired
            with self._lock:
                for name, aspired in found.items():
                    if name in self._models:
                        self._models[name].aspired = aspired
            errors: list[str] = []
            for name in found:
                errors += self._reconcile_model(name)
            return errors

    def _discover(self, name: str, entry: ModelEntry) -> tuple[dict[int, str], str | None]:
        policy = lifecycle.VersionPolicy.from_entry(entry)
        disc = lifecycle.discover_versions(entry.base_path, policy, name)
        chosen, warnings = lifecycle.aspired(policy, disc, name)
        for w in disc.warnings + warnings:
            self.warn_once(w)
        aspired: dict[int, str] = {}
        for d in chosen:  # under "all", 01 and 1 are both aspired; TF Serving manages the first
            if d.version in aspired:
                self.warn_once(f"Version {d.version} of servable {name} is aspired from both "
                                f"{aspired[d.version]} and {d.path}: TF Serving manages the first only")
                continue
            aspired[d.version] = str(d.path)
        return aspired, disc.error

    def tick(self) -> list[str]:
        """Run what is due now: the periodic file-system poll, else load retries."""
        if self._fs_mode == "periodic" and time.monotonic() >= self._next_poll:
            return self.poll()
        with self._reconcile:
            return self._retry_due()

    def next_due(self) -> float:
        """Monotonic time of the next poll or retry (inf: nothing scheduled)."""
        wake = self._next_poll if self._fs_mode == "periodic" else math.inf
        with self._lock:
            for m in self._models.values():
                for a in m.attempts.values():
                    if a.count < len(self._offsets):
                        wake = min(wake, a.due)
        return wake

    def _retry_due(self) -> list[str]:
        now = time.monotonic()
        with self._lock:
            due = [n for n, m in self._models.items()
                   if any(a.count < len(self._offsets) and a.due <= now for a in m.attempts.values())]
        errors: list[str] = []
        for name in due:
            errors += self._reconcile_model(name)
        return errors

    def _reconcile_model(self, name: str) -> list[str]:
        """Apply the availability-preserving policy to one model until it has nothing to do."""
        errors: list[str] = []
        while (act := self._next_action(name)) is not None:
            kind, version, path = act
            if kind == "unload":
                self._unload(name, [version])
            else:
                err = self._attempt(name, version, path)
                if err:
                    errors.append(err)
        return errors

    def _next_action(self, name: str) -> tuple[str, int, str] | None:
        """``next_action`` over this model's versions: loaded ones are ready, aspired ones not
        loaded are new (or due for a retry), loading (retry pending) or error (all attempts
        failed). Attempts of versions no longer aspired are forgotten: a directory that comes
        back gets fresh attempts."""
        now = time.monotonic()
        with self._lock:
            model = self._models.get(name)
            if model is None or model.aspired is None:
                return None
            aspired, loaded = model.aspired, self._servables[name]
            for v in [v for v in model.attempts if v not in aspired]:
                a = model.attempts.pop(v)
                if v not in loaded:
                    self._states[name][v] = VersionState("END", a.code, a.error)
            states = {v: lifecycle.VersionState(v in aspired, "ready") for v in loaded}
            for v in aspired:
                if v in loaded:
                    continue
                a = model.attempts.get(v)
                if a is None or (a.count < len(self._offsets) and a.due <= now):
                    states[v] = lifecycle.VersionState(True, "new")
                else:
                    states[v] = lifecycle.VersionState(True, "error" if a.count >= len(self._offsets) else "loading")
            act = lifecycle.next_action(states)
            if act is None:
                return None
            return act[0], act[1], aspired.get(act[1], "")

    # -- loads and unloads -----------------------------------------------------------------------
    def _set_state(self, name: str, version: int, state: str, code: str = "OK", msg: str = "") -> None:
        with self._lock:
            self._states.setdefault(name, {})[version] = VersionState(state, code, msg)

    def _attempt(self, name: str, version: int, path: str) -> str:
        """One load attempt; a failure schedules the next (or ends the version after the last)."""
        with self._lock:
            done = self._models[name].attempts.get(version, _Attempts()).count
        if done:
            self.log.info("Retrying of Loading servable: {name: %s version: %d} retry: %d", name, version, done)
        failure = self._load(name, version, path)
        if failure is None:
            with self._lock:
                if name in self._models:
                    self._models[name].attempts.pop(version, None)
            return ""
        code, message = failure
        with self._lock:
            model = self._models.get(name)
            if model is None:
                return ""
            a = model.attempts.setdefault(version, _Attempts())
            a.count, a.code, a.error = a.count + 1, code, message
            last = a.count >= len(self._offsets)
            if not last:
                a.due = time.monotonic() + self._offsets[a.count] - self._offsets[a.count - 1]
            self._states[name][version] = (VersionState("END", code, message) if last
                                           else VersionState("LOADING"))
        if last:
            self.log.info("Retrying of Loading servable: {name: %s version: %d} exhausted max_num_retries: "
                          "%d; not loaded again while it stays on disk", name, version,
                          self.flags.max_num_load_retries)
        return f"{name} version {version}: {message}"

    def _load(self, name: str, version: int, path: str) -> tuple[str, str] | None:
        """Load and warm one version; (code, message) when it fails."""
        self._set_state(name, version, "LOADING")
        self.log.info("Loading servable version {name: %s version: %d}", name, version)
        t0 = time.monotonic()
        s = Servable(name, version, path, self.log, self.method_check, self.session_config)  # bf16 hook
        s.batcher = self.batcher  # before load: warmup runs through the batcher, as in TF Serving
        try:
            s.load(self.enable_warmup)
        except RpcStatus as e:
            if s.session is not None:
                s.close(0)
            self.log.error("Loading servable: {name: %s version: %d} failed: %s", name, version, e.message)
            return e.code, e.message
        with self._lock:
            if name not in self._models:  # model removed from the config while loading
                s.close(0)
                self._states[name][version] = VersionState("END")
                return None
            self._servables[name][version] = s
            self._states[name][version] = VersionState("AVAILABLE")
        self.log.info("Successfully loaded servable version {name: %s version: %d} in %.2f s "
                      "(%d warmup records)", name, version, time.monotonic() - t0, s.warmup_records)
        return None

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

    # -- waiting ---------------------------------------------------------------------------------
    def latest_outcome(self, name: str) -> tuple[str, str]:
        """Where the latest aspired version of ``name`` stands: ("available", ""), ("failed",
        TF Serving's description) or ("waiting", why)."""
        with self._lock:
            model = self._models.get(name)
            if model is None:
                return "failed", f"{{name: {name}}} is not in the config"
            if not model.aspired:
                return "waiting", f"no version of {name} found under {model.entry.base_path}"
            latest = max(model.aspired)
            state = self._states.get(name, {}).get(latest)
        if state is not None and state.state == "AVAILABLE":
            return "available", ""
        if state is not None and state.state == "END" and state.error_code != "OK":
            return "failed", (f"{{name: {name} version: {latest}}} due to error: "
                              f"{state.error_code}: {state.error_message}")
        return "waiting", f"{name} version {latest} is {state.state if state else 'START'}"

    def wait_for_models(self, names: Iterable[str], stop: threading.Event) -> list[str]:
        """Block until the latest aspired version of every model in ``names`` is AVAILABLE or has
        failed every attempt, running polls and retries meanwhile (the caller may be the poll
        thread). Returns one description per failed model; an empty list also when ``stop``
        was set. A model with no version keeps this waiting, as TF Serving's start-up does."""
        pending = list(names)
        failed: list[str] = []
        announced: set[str] = set()
        while pending and not stop.is_set():
            try:
                self.tick()
            except Exception:  # noqa: BLE001 - a disk error must not end the wait; it is logged
                self.log.exception("poll failed")
            for name in list(pending):
                outcome, detail = self.latest_outcome(name)
                if outcome == "waiting" and detail.startswith("no version") and name not in announced:
                    announced.add(name)
                    self.log.warning("Waiting for model %s: %s (TF Serving waits too)", name, detail)
                if outcome != "waiting":
                    pending.remove(name)
                    if outcome == "failed":
                        failed.append(detail)
            if pending:
                stop.wait(min(max(self.next_due() - time.monotonic(), 0.01), 0.1))
        return failed

    def warn_once(self, message: str, level: int = logging.WARNING) -> None:
        """Polls repeat every second; a standing problem (duplicate version names) is logged once."""
        if message not in self._warned:
            self._warned.add(message)
            self.log.log(level, "%s", message)

    def has_versions(self, name: str) -> bool:
        """Whether the last poll found a version of ``name`` to load."""
        with self._lock:
            model = self._models.get(name)
            return bool(model is not None and model.aspired)

    def shutdown(self) -> None:
        with self._reconcile:
            for name in list(self._servables):
                self._unload(name, list(self._servables[name]))
