"""Which backend does what: the one that builds an env (``ALLY_INSTALLER``, uv when it is
available), the one an env was built with, and the one that seeds pip and checks envs (uv
whenever it is available, whatever built the env)."""

from __future__ import annotations

from pathlib import Path

from ...envs import EnvInfo, EnvSpec, Interpreter
from ...errors import InstallFailed
from .backend import Backend
from .pip_backend import PipBackend
from .pip_seed import pip_wheel
from .uv_backend import UvBackend
from .uv_locate import usable_uv, uv_available

UV = UvBackend()
PIP = PipBackend()
BACKENDS: dict[str, Backend] = {UV.name: UV, PIP.name: PIP}


def backend_for(spec: EnvSpec) -> Backend:
    """The backend that builds ``spec``'s env (raises if ``uv`` is asked for but missing)."""
    choice = spec.options.installer
    if choice == "pip":
        return PIP
    if not uv_available():
        if choice == "uv":
            raise InstallFailed(
                "installer 'uv' was requested (ALLY_INSTALLER=uv) but uv is "
                "not installed; pip install uv, or use ALLY_INSTALLER=pip"
            )
        return PIP
    return UV


def backend_of(env: EnvInfo) -> Backend:
    """The backend ``env`` was built with (recorded in its data; ``pip`` if none is)."""
    return BACKENDS.get(env.data.get("backend", "pip"), PIP)


def fastest_available() -> Backend:
    """uv if it can be used, else pip: what seeds pip and checks an env, whatever built it."""
    return UV if usable_uv() is not None else PIP


def seed_pip(spec: EnvSpec, interpreter: Interpreter, env_python: Path) -> None:
    """Install pip into the env from a wheel on this machine (never from an index).

    The wheel virtualenv embeds for this Python, else the one the interpreter's own
    ``ensurepip`` ships (Python 3.6-3.8, which current virtualenv releases no longer seed).
    uv installs it in ~0.07 s (hardlinked from its cache); without uv, pip installs itself
    from its own wheel. Used where the env's own commands need pip as a package
    (``install_command`` may run ``python -m pip``) and where virtualenv seeds none.
    """
    wheel = pip_wheel(spec, interpreter, env_python)
    argv, environ = fastest_available().wheel_install_command(spec, env_python, wheel)
    spec.run(argv, env=environ, what=f"installing pip {wheel.name.split('-')[1]} into the env")
