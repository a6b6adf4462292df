"""Build and push a prepared serving-image context with the docker SDK.

Kept apart from ``builder.deploy.image`` (which only writes files and never needs an engine), so
a host without Docker can prepare and gate a context, and print the exact ``docker build`` /
``docker push`` commands (:func:`build_command`, :func:`push_command`) for one that has it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from builder.core import log
from builder.core.errors import PublishError, ServingError, UnavailableError
from builder.deploy.image import DEFAULT_SERVING_TAG, split_image, validate_image_ref

_LOG = log.get(__name__)


def build_command(context: str | os.PathLike, image: str,
                  serving_tag: str = DEFAULT_SERVING_TAG, target: str = "serving") -> list[str]:
    """The ``docker build`` argv equivalent to what ``build_and_push`` asks the engine for."""
    ctx = Path(context)
    return ["docker", "build", "--build-arg", f"SERVING_TAG={serving_tag}",
            "--target", target,  # bf16 hook (issue 12)
            "--tag", image, "--file", str(ctx / "Dockerfile"), str(ctx)]


def push_command(image: str) -> list[str]:
    return ["docker", "push", image]


def docker_client() -> Any:
    """A docker SDK client whose engine answers ping, or UnavailableError (one line)."""
    try:
        import docker
    except ImportError:
        raise UnavailableError("no Docker SDK: pip install docker==7.2.0 (or build with the "
                               "printed docker command on a Docker host)") from None
    try:
        client = docker.from_env()
        client.ping()
    except Exception as e:  # noqa: BLE001 - any failure to reach the engine means "no engine"
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UnavailableError(f"no Docker engine: {reason} (set DOCKER_HOST, start dockerd, "
                               "or run the printed docker build command on a Docker host)"
                               ) from None
    return client


def build_and_push(context: str | os.PathLike, image: str,
                   serving_tag: str = DEFAULT_SERVING_TAG, push: bool = True,
                   client: Any = None, log: Callable[[str], None] | None = None,
                   target: str = "serving") -> str:
    """Build the context with the docker SDK, then push. Returns the image id.

    Build and push errors become BuilderErrors carrying the engine's own last message, since
    that (unknown tag, auth required) is what the user has to act on. The engine's output
    goes to ``log`` (default: the builder log channel on stderr).
    """
    validate_image_ref(image)
    client = client or docker_client()
    say = log or _LOG.info
    import docker

    try:
        img, logs = client.images.build(path=str(context), dockerfile="Dockerfile",
                                        buildargs={"SERVING_TAG": serving_tag}, tag=image,
                                        rm=True, target=target)  # bf16 hook: target
    except docker.errors.BuildError as e:
        raise ServingError(f"docker build of {image} failed: {e.msg}") from None
    except docker.errors.APIError as e:
        raise ServingError(f"docker build of {image} failed: {e.explanation or e}") from None
    for chunk in logs:
        line = chunk.get("stream", "").rstrip() if isinstance(chunk, dict) else ""
        if line:
            say(line)
    if push:
        _push(client, image, say)
    return img.id


def _push(client: Any, image: str, say: Callable[[str], None]) -> None:
    import docker

    repo, tag = split_image(image)
    try:
        for chunk in client.images.push(repo, tag=tag, stream=True, decode=True):
            if "error" in chunk:
                raise PublishError(f"docker push {image} failed: {chunk['error']}")
            status = chunk.get("status")
            if status and "id" not in chunk:
                say(status)
    except docker.errors.APIError as e:
        raise PublishError(f"docker push {image} failed: {e.explanation or e}") from None
