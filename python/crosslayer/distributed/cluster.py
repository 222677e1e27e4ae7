"""Connecting to Ray: a local cluster crosslayer starts itself (token authentication, loopback only, no dashboard
unless asked, and then on loopback), or an existing cluster at an address the user gives."""

from __future__ import annotations

import ipaddress
import os
import secrets
from contextlib import contextmanager

from crosslayer.errors import CrossLayerError, UsageError

LOOPBACK = "127.0.0.1"
# token authentication; Ray's switch that keeps a single-machine cluster on the loopback address (its own default on
# macOS and Windows) instead of the machine's network address
_SESSION_VARIABLES = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")


class RayMissingError(CrossLayerError, ImportError):
    """Ray is not installed (it is the optional extra crosslayer[ray])."""


def require_ray():
    """The `ray` module, or RayMissingError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise RayMissingError("--ray: Ray is not installed; install the extra: pip install 'crosslayer[ray]'") from None
    return ray


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def resolve_address(address: str) -> str:
    """The cluster Ray would connect to for `address`: "auto" is RAY_ADDRESS when set (as Ray reads it), else the
    latest cluster started on this machine (Ray's own lookup); any other address is itself."""
    if address != "auto":
        return address
    from_environment = os.environ.get("RAY_ADDRESS", "")
    if from_environment and from_environment != "auto":
        return from_environment
    from ray._private.services import get_ray_address_from_environment

    try:
        return get_ray_address_from_environment("auto", None)
    except ConnectionError:
        raise UsageError("address: 'auto' found no running Ray cluster on this machine and RAY_ADDRESS is not set; "
                         "give HOST:PORT of the cluster") from None


def check_address(address: str) -> str:
    """The address to connect to for `address` (host:port of a running cluster, or "auto", resolved by
    `resolve_address`); a non-loopback cluster is refused unless this process authenticates with a token
    (RAY_AUTH_MODE=token): Ray's control plane runs any code for whoever reaches it."""
    if not isinstance(address, str) or not address:
        raise UsageError(f"address: expected HOST:PORT of a Ray cluster or 'auto', got {address!r}")
    resolved = resolve_address(address)
    host = resolved.split("://", 1)[-1].rsplit(":", 1)[0]
    if not _is_loopback(host) and os.environ.get("RAY_AUTH_MODE") != "token":
        named = resolved if resolved == address else f"{address} ({resolved})"
        raise UsageError(f"address: {named} is not on this machine and RAY_AUTH_MODE is not 'token'; start the "
                         "cluster with token authentication and set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN (or "
                         "RAY_AUTH_TOKEN_PATH) here (see the README, 'Running on a Ray cluster')")
    return resolved


@contextmanager
def ray_session(address: str | None = None, cpus: int | None = None, dashboard: bool = False):
    """Yields the `ray` module connected to a cluster: the one this process is already connected to, else the
    cluster at `address`, else a local cluster of `cpus` CPUs (default: all) started now and stopped on exit.

    A local cluster runs with token authentication (a fresh random token unless RAY_AUTH_TOKEN is set) on loopback
    only; its dashboard (and with it job submission) is off unless `dashboard`, and then listens on 127.0.0.1."""
    ray = require_ray()
    if ray.is_initialized():
        yield ray
        return
    if address is not None:
        ray.init(address=check_address(address), log_to_driver=False)
        try:
            yield ray
        finally:
            ray.shutdown()
        return
    if cpus is not None and (isinstance(cpus, bool) or not isinstance(cpus, int) or cpus < 1):
        raise UsageError(f"workers: expected a positive number of CPUs, got {cpus!r}")
    from ray._private import ray_constants

    saved = {name: os.environ.get(name) for name in _SESSION_VARIABLES}
    saved_cluster_switch = ray_constants.ENABLE_RAY_CLUSTER
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # for the processes Ray starts
    ray_constants.ENABLE_RAY_CLUSTER = False  # read when this process picks the node address
    _reload_auth_settings()
    try:
        # "local": a new cluster even when RAY_ADDRESS names another one (Ray would join that one instead)
        ray.init(address="local", num_cpus=cpus or os.cpu_count(), include_dashboard=dashboard, dashboard_host=LOOPBACK,
                 _node_ip_address=LOOPBACK, log_to_driver=False)
        try:
            yield ray
        finally:
            ray.shutdown()
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_cluster_switch
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        _reload_auth_settings()


def _reload_auth_settings() -> None:
    """Ray reads RAY_AUTH_MODE and the token once per process; a session started later must read them anew."""
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()
