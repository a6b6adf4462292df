"""TF Serving's model life-cycle rules as pure functions over real files.

Used by ``preflight`` (simulating the real server) and by the local server
(``builder/serve/manager.py``, ``builder/serve/local.py``), in this order: read the flags into
``ServerFlags`` (defaults are ``tensorflow_model_server``'s); on every config ``validate_config``,
then ``check_labels`` against the versions AVAILABLE at that moment (nothing at start-up: labels
are checked *before* any model is added; ``previous_labels`` on a reload), and a refusal rejects
the whole config. On every file system poll ``discover_versions``/``aspired`` (duplicate
``1``/``01`` names, files that parse as versions, the fast path of the ``specific`` policy; the
version-name rule is ``builder.core.layout.parse_version_name`` and the policy evaluation
``models_config.served_versions``, one definition each); loads and unloads by ``next_action``
(availability preserving: the old version serves until the new one is AVAILABLE); failed loads
retried on ``load_attempt_offsets(flags)`` and never again while the failed directory stays on
disk. Before a version turns AVAILABLE, ``check_warmup`` must be empty. Start-up waits for the
latest aspired version of every model (``startup_plan``). ``poll_mode`` / ``config_poll_mode``
tell whether the base paths / config file are read once, periodically or never.

Every rule names the TF Serving 2.17.0 source it copies (tensorflow_serving/...).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from builder.config.models_config import served_versions
from builder.core import layout

# model_servers/server.h (Server::Options) and main.cc flag definitions, tag 2.17.0.
DEFAULT_MAX_NUM_LOAD_RETRIES = 5
DEFAULT_LOAD_RETRY_INTERVAL_MICROS = 60 * 1000 * 1000
DEFAULT_FILE_SYSTEM_POLL_WAIT_SECONDS = 1
DEFAULT_MODEL_CONFIG_FILE_POLL_WAIT_SECONDS = 0
# servables/tensorflow/saved_model_warmup_util.h: WarmupConsts::kMaxNumRecords.
MAX_WARMUP_RECORDS = 1000
WARMUP_FILE = Path("assets.extra") / "tf_serving_warmup_requests"


@dataclass(frozen=True)
class ServerFlags:
    """The ``tensorflow_model_server`` flags that change life-cycle decisions (main.cc)."""

    allow_version_labels_for_unavailable_models: bool = False
    max_num_load_retries: int = DEFAULT_MAX_NUM_LOAD_RETRIES
    load_retry_interval_micros: int = DEFAULT_LOAD_RETRY_INTERVAL_MICROS
    file_system_poll_wait_seconds: int = DEFAULT_FILE_SYSTEM_POLL_WAIT_SECONDS
    model_config_file_poll_wait_seconds: int = DEFAULT_MODEL_CONFIG_FILE_POLL_WAIT_SECONDS
    enable_model_warmup: bool = True
    enable_batching: bool = False
    xla_cpu_compilation_enabled: bool = False

    @classmethod
    def from_args(cls, args: Iterable[str]) -> ServerFlags:
        """Parse ``--flag=value`` strings (as in ``builder.deploy.image.server_flags()``)."""
        fields = cls.__dataclass_fields__
        values: dict[str, Any] = {}
        for arg in args:
            name, _, raw = arg.lstrip("-").partition("=")
            if name not in fields:
                continue
            kind = fields[name].type
            if kind in ("bool", bool):
                values[name] = raw.strip().lower() in ("", "1", "true")
            else:
                values[name] = int(raw)
        return cls(**values)


# --------------------------------------------------------------------------- version directories


@dataclass(frozen=True)
class VersionDir:
    """One child of a base path that TF Serving treats as a version (directory or not: the
    server lists children, so a *file* named ``3`` is aspired too and then fails to load)."""

    version: int
    name: str
    path: Path


@dataclass(frozen=True)
class VersionPolicy:
    """``model_version_policy``: ``latest`` (default, num_versions >= 1), ``all`` or ``specific``."""

    kind: str = "latest"
    num_versions: int = 1
    versions: tuple[int, ...] = ()

    @classmethod
    def from_proto(cls, model_config: Any) -> VersionPolicy:
        """From a ``ModelConfig`` (tensorflow_serving/config/model_server_config.proto)."""
        pol = model_config.model_version_policy
        which = pol.WhichOneof("policy_choice")
        if which == "all":
            return cls("all")
        if which == "specific":
            return cls("specific", versions=tuple(int(v) for v in pol.specific.versions))
        n = pol.latest.num_versions if which == "latest" else 1
        return cls("latest", num_versions=int(n))

    @classmethod
    def from_entry(cls, entry: Any) -> VersionPolicy:
        """From a ``models_config.ModelEntry`` (what the local server holds)."""
        return cls(entry.policy, int(entry.num_versions), tuple(entry.versions))


@dataclass
class Discovery:
    """What one file-system poll of a base path finds (``PollFileSystemForServable``)."""

    base_path: Path
    candidates: list[VersionDir] = field(default_factory=list)  # what the policy chooses from
    ignored: list[VersionDir] = field(default_factory=list)  # duplicate names TF Serving skips
    warnings: list[str] = field(default_factory=list)  # TF Serving's own LOG(WARNING) lines
    error: str | None = None  # the poll fails (missing base path): nothing is aspired


def discover_versions(base_path: str | os.PathLike, policy: VersionPolicy | None = None,
                      model: str = "") -> Discovery:
    """List a base path the way ``FileSystemStoragePathSource`` does for ``policy``.

    - missing base path: the poll errs ("Could not find base path ..."), nothing is aspired;
    - ``specific`` fast path: when every requested version exists under its plain name
      (``str(v)``), exactly those are used and other spellings are not even listed;
    - ``latest``/``specific``: children are indexed by version in byte order (a ``std::set``),
      so for ``01`` and ``1`` the later name wins and TF Serving warns "Duplicate version
      directories detected. Version 1 will be loaded from 1, 01 will be ignored.";
    - ``all``: every child that parses is aspired, duplicates included, with no warning.
    """
    policy = policy or VersionPolicy()
    base = Path(base_path)
    name = model or base.name
    out = Discovery(base)
    if not base.exists():
        out.error = f"Could not find base path {base} for servable {name}"
        return out
    if policy.kind == "specific" and policy.versions and all(
            (base / str(v)).exists() for v in policy.versions):
        out.candidates = [VersionDir(v, str(v), base / str(v)) for v in sorted(set(policy.versions))]
        return out
    try:
        children = sorted({c.name for c in base.iterdir()}, key=lambda s: s.encode())
    except OSError as e:  # not a directory, or unreadable: GetChildren fails the poll
        out.error = f"Could not list base path {base} for servable {name}: {e.strerror or e}"
        return out
    out.warnings += [w for c in children if (w := layout.negative_version_warning(base, c))]
    if policy.kind == "all":  # AspireAllVersions: every child that parses, duplicates included
        out.candidates = [VersionDir(v, c, base / c) for c in children
                          if (v := layout.parse_version_name(c)) is not None]
        return out
    by_version, duplicates = layout.index_by_version(children)
    for v, kept, ignored in duplicates:
        out.warnings.append(f"Duplicate version directories detected. Version {v} will be loaded "
                            f"from {kept}, {ignored} will be ignored.")
        out.ignored.append(VersionDir(v, ignored, base / ignored))
    out.candidates = [VersionDir(v, c, base / c) for v, c in sorted(by_version.items())]
    return out


def aspired(policy: VersionPolicy, discovery: Discovery, model: str = "") -> tuple[list[VersionDir], list[str]]:
    """The versions TF Serving aspires (wants loaded) and the warnings it logs while choosing.

    ``latest``: the ``max(num_versions, 1)`` highest; ``all``: every candidate; ``specific``:
    the requested ones found ("Version N of servable M, which was requested to be served as a
    'specific' version ..., was not found in the file system" for the others)."""
    name = model or discovery.base_path.name
    if discovery.error:
        return [], []
    if policy.kind == "specific" and not policy.versions:
        return [], [f"No specific versions requested for servable {name}."]
    warnings: list[str] = []
    cands = discovery.candidates
    keep = set(served_versions(policy.kind, [c.version for c in cands], policy.num_versions,
                               policy.versions))
    chosen = [c for c in cands if c.version in keep]
    if policy.kind == "specific":
        warnings += [f"Version {v} of servable {name}, which was requested to be served as a "
                     "'specific' version in the servable's version policy, was not found in the "
                     "file system" for v in sorted(set(policy.versions) - keep)]
    if not chosen:
        warnings.append(f"No versions of servable {name} found under base path "
                        f"{discovery.base_path}. Did you forget to name your leaf directory as a "
                        "number (eg. '/1/')?")
    return sorted(chosen, key=lambda c: (c.version, c.name)), warnings


def poll_mode(poll_wait_seconds: int) -> str:
    """``once`` (0), ``periodic`` (> 0) or ``never`` (< 0) for --file_system_poll_wait_seconds
    (file_system_storage_path_source.cc ``SetAspiredVersionsCallback``: 0 polls exactly once; a
    negative value starts no thread, so start-up waits forever). For
    --model_config_file_poll_wait_seconds (server.cc) only > 0 re-reads the file: 0 and negative
    read it once at start-up, so pass it through ``config_poll_mode``."""
    if poll_wait_seconds == 0:
        return "once"
    return "periodic" if poll_wait_seconds > 0 else "never"


def config_poll_mode(poll_wait_seconds: int) -> str:
    """server.cc ``BuildAndStart``: the config-file poll thread starts only for > 0."""
    return "periodic" if poll_wait_seconds > 0 else "once"


# --------------------------------------------------------------------------- loads and retries


def load_attempt_offsets(flags: ServerFlags = ServerFlags()) -> list[float]:
    """Seconds after the first attempt at which each load attempt starts, failures assumed
    instant (util/retrier.cc ``Retry``: ``max_num_load_retries + 1`` attempts, sleeping
    ``load_retry_interval_micros`` between them; a negative interval does not wait). After the
    last one the version stays in the error state and is not loaded again while it is aspired,
    i.e. while its directory stays on disk (core/aspired_versions_manager.cc)."""
    step = max(flags.load_retry_interval_micros, 0) / 1e6
    return [i * step for i in range(max(flags.max_num_load_retries, 0) + 1)]


@dataclass
class VersionState:
    """One version as the manager sees it (core/loader_harness.h states, simplified)."""

    is_aspired: bool
    state: str = "new"  # new | ready | error | disabled


def next_action(versions: Mapping[int, VersionState]) -> tuple[str, int] | None:
    """``AvailabilityPreservingPolicy::GetNextAction`` (core/availability_preserving_policy.cc).

    Unload the lowest un-aspired ready version only when there is no aspired version, an
    aspired version is ready, or more than one un-aspired version is ready; otherwise load the
    highest new aspired version. So v1 keeps serving while v2 loads, and forever if v2 fails."""
    has_aspired = any(s.is_aspired for s in versions.values())
    has_aspired_ready = any(s.is_aspired and s.state == "ready" for s in versions.values())
    unaspired_ready = sorted(v for v, s in versions.items() if not s.is_aspired and s.state == "ready")
    if (not has_aspired or has_aspired_ready or len(unaspired_ready) > 1) and unaspired_ready:
        return "unload", unaspired_ready[0]
    new = [v for v, s in versions.items() if s.is_aspired and s.state == "new"]
    if new:
        return "load", max(new)
    return None


@dataclass
class Transition:
    """The outcome of one change of aspired versions under the availability-preserving policy."""

    serving: list[int]
    failed: list[int]
    unloaded: list[int]
    events: list[str]


def transition(serving: Iterable[int], new_aspired: Iterable[int],
               load_error: Callable[[int], str | None], flags: ServerFlags = ServerFlags()) -> Transition:
    """Run ``next_action`` to a fixed point: which versions serve after the server's aspired set
    changes from ``serving`` to ``new_aspired``. ``load_error(v)`` is None when v loads, else the
    error every attempt (``load_attempt_offsets``) gets."""
    aspired_set = set(new_aspired)
    states = {v: VersionState(v in aspired_set, "ready") for v in serving}
    for v in aspired_set - set(states):
        states[v] = VersionState(True, "new")
    events: list[str] = []
    unloaded: list[int] = []
    attempts = len(load_attempt_offsets(flags))
    while (act := next_action(states)) is not None:
        kind, v = act
        if kind == "unload":
            states[v].state = "disabled"
            unloaded.append(v)
            events.append(f"unload {v}")
            continue
        err = load_error(v)
        if err is None:
            states[v].state = "ready"
            events.append(f"load {v}: AVAILABLE")
        else:
            states[v].state = "error"
            events.append(f"load {v}: failed {attempts} time(s) over "
                          f"{load_attempt_offsets(flags)[-1]:.0f} s, not retried while on disk: {err}")
    return Transition(serving=sorted(v for v, s in states.items() if s.state == "ready"),
                      failed=sorted(v for v, s in states.items() if s.state == "error"),
                      unloaded=unloaded, events=events)


# --------------------------------------------------------------------------- labels


def check_labels(labels: Mapping[str, int], available: Iterable[int], allow_unavailable: bool = False,
                 previous_labels: Mapping[str, int] | None = None, model: str = "") -> list[str]:
    """Why TF Serving refuses a model's ``version_labels`` (empty: accepted).

    ``ServerCore::UpdateModelVersionLabelMap`` (model_servers/server_core.cc) runs on every
    config load *before* models are added: a label must point at an AVAILABLE version, unless
    --allow_version_labels_for_unavailable_models is set and the label is new or keeps its
    version (an existing label may not move to a version that is not available). One refused
    label fails the whole config: at start-up the server exits, on a reload the new config is
    not applied (and is retried at the next config poll)."""
    avail = set(available)
    previous = dict(previous_labels or {})
    errors = []
    for label, version in sorted(labels.items()):
        moving = label in previous and previous[label] != version
        allowed = allow_unavailable and not moving
        if not allowed and version not in avail:
            errors.append(f"Request to assign label to version {version} of model {model}, which is "
                          "not currently available for inference")
    return errors


# --------------------------------------------------------------------------- warmup


def check_warmup(version_dir: str | os.PathLike, signatures: Mapping[str, Iterable[str]] | None = None) -> list[str]:
    """Why the warmup file fails the load (servables/tensorflow/saved_model_warmup_util.cc and
    saved_model_warmup.cc), checked without running the model: a truncated TFRecord ("Please
    verify your warmup data is in TFRecord format"), a record that is not a PredictionLog, more
    than 1000 records, SessionRun/PredictStreamed logs ("Unsupported log_type for warmup").
    With ``signatures`` ({key: input aliases}) a predict record naming an unknown signature or
    other inputs is reported too (predict_util.cc refuses it at replay). Running every record
    is the runtime half; preflight does it in a subprocess."""
    path = Path(version_dir) / WARMUP_FILE
    if not path.is_file():
        return []
    try:
        records = _read_records(path)
    except ValueError as e:
        return [f"{path}: {e}. Please verify your warmup data is in TFRecord format."]
    problems: list[str] = []
    if len(records) > MAX_WARMUP_RECORDS:
        problems.append(f"Number of warmup records exceeds the maximum ({MAX_WARMUP_RECORDS}) at "
                        f"{path} ({len(records)} records)")
    from google.protobuf.message import DecodeError
    from tensorflow_serving.apis import prediction_log_pb2

    for i, raw in enumerate(records[:MAX_WARMUP_RECORDS + 1]):
        log = prediction_log_pb2.PredictionLog()
        try:
            log.ParseFromString(raw)
        except DecodeError:
            problems.append(f"{path}: record {i}: Failed to parse warmup record (not a PredictionLog)")
            break
        kind = log.WhichOneof("log_type")
        if kind in ("session_run_log", "predict_streamed_log"):
            problems.append(f"{path}: record {i}: Unsupported log_type for warmup: {kind}")
            break
        if kind == "predict_log" and signatures is not None:
            req = log.predict_log.request
            key = req.model_spec.signature_name or "serving_default"
            if key not in signatures:
                problems.append(f"{path}: record {i}: signature {key!r} not found (has "
                                f"{', '.join(sorted(signatures))})")
                break
            want, got = set(signatures[key]), set(req.inputs)
            if want != got:
                problems.append(f"{path}: record {i}: inputs {sorted(got)} do not match signature "
                                f"{key!r} inputs {sorted(want)}")
                break
    return problems


def _read_records(path: Path) -> list[bytes]:
    """TFRecord framing (u64 length, u32 crc, data, u32 crc); a short read is data loss."""
    import struct

    out = []
    data = path.read_bytes()
    pos = 0
    while pos < len(data):
        if len(data) - pos < 12:
            raise ValueError(f"truncated record header at byte {pos}")
        (n,) = struct.unpack_from("<Q", data, pos)
        end = pos + 12 + n + 4
        if end > len(data):
            raise ValueError(f"truncated record at byte {pos}")
        out.append(data[pos + 12:pos + 12 + n])
        pos = end
    return out


# --------------------------------------------------------------------------- start-up


@dataclass
class Load:
    """One aspired version at start-up."""

    model: str
    version: int
    path: Path
    error: str | None = None  # None: loads (and warms up)

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class StartupPlan:
    """What ``tensorflow_model_server`` does with a config and the files on disk at start-up."""

    loads: list[Load] = field(default_factory=list)
    label_errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    would_exit: bool = False  # "Failed to start server" (exit code 255)
    would_hang: bool = False  # start-up waits forever for a version that never appears
    reasons: list[str] = field(default_factory=list)

    @property
    def starts(self) -> bool:
        return not (self.would_exit or self.would_hang)


def validate_config(config: Any) -> list[str]:
    """``ValidateModelConfigList`` (server_core.cc): unique names, absolute base paths.

    ``config`` is a ``ModelServerConfig`` or a list of ``models_config.ModelEntry`` (what the
    local server applies); both have ``name`` and ``base_path`` per model."""
    models = config.model_config_list.config if hasattr(config, "model_config_list") else config
    seen: set[str] = set()
    errors = []
    for c in models:
        if c.name in seen:
            errors.append(f"Illegal to list model {c.name} multiple times in config list")
        seen.add(c.name)
        if not (c.base_path.startswith("/") or "://" in c.base_path):
            errors.append(f"Expected model {c.name} to have an absolute path or URI; got "
                          f"base_path()={c.base_path}")
    return errors


def startup_plan(config: Any, flags: ServerFlags = ServerFlags(),
                 load_errors: Mapping[tuple[str, int], str] | None = None) -> StartupPlan:
    """Simulate ``Server::BuildAndStart`` -> ``ServerCore::ReloadConfig`` on a first config.

    Order (server_core.cc): validate the list; ``UpdateModelVersionLabelMap`` with nothing loaded
    yet (so any label fails unless --allow_version_labels_for_unavailable_models); add the
    models and wait until the latest aspired version of every model is AVAILABLE
    (``ConnectSourcesWithFastInitialLoad``, no timeout): a failed load - after its retries -
    exits, a model with no version waits forever. ``load_errors[(model, version)]`` is the
    error a version's load (or warmup) gets; absent: it loads."""
    load_errors = dict(load_errors or {})
    plan = StartupPlan()
    errors = validate_config(config)
    if errors:
        plan.would_exit = True
        plan.reasons += errors
        return plan
    for c in config.model_config_list.config:
        plan.label_errors += check_labels(dict(c.version_labels), (), flags.allow_version_labels_for_unavailable_models,
                                          None, c.name)
    if plan.label_errors:
        plan.would_exit = True
        plan.reasons.append(plan.label_errors[0] + " (labels are checked before any model loads; "
                            "--allow_version_labels_for_unavailable_models accepts them)")
        return plan
    retry_s = load_attempt_offsets(flags)[-1]
    for c in config.model_config_list.config:
        policy = VersionPolicy.from_proto(c)
        disc = discover_versions(c.base_path, policy, c.name)
        chosen, warns = aspired(policy, disc, c.name)
        plan.warnings += disc.warnings + warns
        if flags.file_system_poll_wait_seconds < 0:
            plan.would_hang = True
            plan.reasons.append("--file_system_poll_wait_seconds < 0 never polls: start-up waits forever")
        if disc.error or not chosen:
            plan.would_hang = True
            plan.reasons.append(f"model {c.name}: {disc.error or 'no version to load'}: start-up waits "
                                "forever for its latest version")
            continue
        for vd in chosen:
            err = load_errors.get((c.name, vd.version))
            if err is None and not (vd.path.is_dir()):
                err = f"{vd.path} is not a directory"
            plan.loads.append(Load(c.name, vd.version, vd.path, err))
        latest = max(chosen, key=lambda d: d.version)
        err = next(ld.error for ld in plan.loads if ld.model == c.name and ld.version == latest.version)
        if err is not None:
            plan.would_exit = True
            plan.reasons.append(f"model {c.name} version {latest.version} did not become available "
                                f"after {flags.max_num_load_retries + 1} attempt(s) over {retry_s:.0f} s: {err}")
    return plan
