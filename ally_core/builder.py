"""Building an env, in named phases, and judging a published one without starting a process.

:meth:`Builder.build` runs the phases in order:

1. **resolve** the base interpreter (``resolve_interpreter``);
2. **fingerprint**: the request key and the interpreter make the env's fingerprint;
3. **reuse** a published healthy env of that fingerprint (no lock: the fast path of a second
   plugin with the same dependencies);
4. **lock** the fingerprint (another process building it is waited for), then reuse again;
5. **create** the env in a fresh directory at its final place (``create_env``);
6. **install** the dependencies (``install_deps``);
7. **check** it deeply (``health_check(deep=True)``): only a healthy env goes on;
8. **mark** it complete (its marker, written last, records the inputs);
9. **publish** it: the plugin's pointer moves to it (the previous env stays until then).

An unfinished env is removed if anything fails or the build is interrupted.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Callable, Literal, Optional

import attrs

from .config import strip_credentials
from .dispatch import Dispatch
from .envs import EnvInfo, EnvSpec, Interpreter, ProgressEvent
from .errors import InstallFailed
from .store import MARKER, EnvStore, Marker, now_iso, store_errors

__all__ = ["Builder", "Built"]

ProgressCallback = Callable[[ProgressEvent], None]
#: What a build did: built a new env, shared another plugin's, or found its own still there.
Built = tuple[EnvInfo, Marker, Literal["built", "shared", "none"]]


class Builder:
    """Builds envs into one env store. Thread-safe; one build per fingerprint at a time
    (across processes too)."""

    def __init__(self, store: EnvStore, dispatch: Dispatch) -> None:
        self.store = store
        self.dispatch = dispatch
        # Base interpreter path -> its (size, mtime, inode), once per load (see new_load).
        self._interpreters: dict[str, Optional[tuple[int, int, int]]] = {}

    def new_load(self) -> None:
        """Look at base interpreters afresh (once per load)."""
        self._interpreters = {}

    # -- judging a published env ---------------------------------------------------------------

    def cheap_problem(self, spec: EnvSpec, marker: Marker) -> Optional[str]:
        """Why a published env cannot be used as is, or ``None`` (no process is started)."""
        interp = marker.env.interpreter
        if interp.realpath and interp.signature:
            # Plugins share a few base interpreters: each is looked at once per load.
            seen = self._interpreters
            if interp.realpath not in seen:
                try:
                    st = os.stat(interp.realpath)
                    seen[interp.realpath] = (st.st_size, st.st_mtime_ns, st.st_ino)
                except OSError:
                    seen[interp.realpath] = None
            signature = seen[interp.realpath]
            if signature is None:
                return f"interpreter {interp.path} ({interp.kind} {interp.version}) is gone"
            if signature != tuple(interp.signature):
                return (
                    f"interpreter {interp.path} changed since the env was built "
                    f"(was {interp.kind} {interp.version})"
                )
        health = self.dispatch.health_check(spec, marker.env, deep=False)
        if any(p.repairable for p in health.problems):
            return health.describe()
        return None

    # -- the build -----------------------------------------------------------------------------

    def build(
        self,
        spec: EnvSpec,
        key: str,
        inputs: Mapping[str, Any],
        *,
        reuse: bool,
        progress: ProgressCallback,
    ) -> Built:
        """Make an env of ``spec`` for request ``key`` and publish it as the plugin's."""
        interpreter = self.resolve(spec)
        fingerprint = self.fingerprint(key, interpreter)
        shared = self.reuse(spec, fingerprint) if reuse else None
        if shared is not None:
            return shared
        with self.lock(spec.plugin_name, fingerprint, progress):
            # Another process may have built it while this one waited for the lock.
            shared = self.reuse(spec, fingerprint) if reuse else None
            if shared is not None:
                return shared
            for leftover in self.store.unfinished(busy=frozenset({fingerprint[:16]})):
                self.store.remove_path(leftover)
            env_dir = self.store.new_env_dir(fingerprint)
            built = attrs.evolve(spec, env_dir=env_dir)
            name = spec.plugin_name
            progress(ProgressEvent(name, "start", f"Installing dependencies for '{name}'..."))
            try:
                env = self.create(built, interpreter)
                env, packages = self.install(built, env)
                self.check(built, env)
                marker = self.mark(built, env, packages, key, inputs, fingerprint)
                self.publish(built)
            except BaseException:
                published = self.store.current(name)
                if published is None or published[0] != env_dir:
                    self.store.discard(env_dir)
                raise
            progress(ProgressEvent(name, "done", f"Dependencies installed for '{name}'", 1.0))
            return env, marker, "built"

    def resolve(self, spec: EnvSpec) -> Interpreter:
        """Phase *resolve*: the base interpreter the env is built with."""
        return self.dispatch.resolve_interpreter(spec)

    @staticmethod
    def fingerprint(key: str, interpreter: Interpreter) -> str:
        """Phase *fingerprint*: the identity of the env (its inputs and base interpreter)."""
        import hashlib  # cold loads only

        where = interpreter.realpath or interpreter.path
        return hashlib.sha256(f"{key}\0{where}\0{interpreter.version}".encode()).hexdigest()

    @contextmanager
    def lock(self, name: str, fingerprint: str, progress: ProgressCallback) -> Iterator[None]:
        """Phase *lock*: one build of a fingerprint at a time, across processes."""
        from filelock import Timeout

        lock = self.store.lock(fingerprint[:16])
        with store_errors("cannot take the build lock"):
            try:
                lock.acquire(timeout=0)
            except Timeout:
                waiting = f"Waiting for another process installing '{name}'..."
                progress(ProgressEvent(name, "waiting", waiting))
                lock.acquire()
        try:
            yield
        finally:
            lock.release()

    def reuse(self, spec: EnvSpec, fingerprint: str) -> Optional[Built]:
        """Phase *reuse*: point the plugin at a published, healthy env of ``fingerprint``.

        No lock (a lock file costs a 10 ms import of filelock): gc may be deleting the env
        that ``find`` just returned. Both sides write, then look: this side publishes and
        then checks the env is still there; gc hides the env and then checks no pointer
        appeared (and gives it back if one did). Whatever the interleaving, one of them sees
        the other, so a pointer never stays on a deleted env.
        """
        found = self.store.find(fingerprint)
        if found is None:
            return None
        env_dir, marker = found
        if self.cheap_problem(attrs.evolve(spec, env_dir=env_dir), marker) is not None:
            return None
        self.publish(attrs.evolve(spec, env_dir=env_dir))
        if not os.path.isfile(env_dir / MARKER):
            # gc took it between find and publish: build (or wait for gc to give it back).
            return None
        return marker.env, marker, "shared" if marker.plugin != spec.plugin_name else "none"

    def create(self, spec: EnvSpec, interpreter: Interpreter) -> EnvInfo:
        """Phase *create*: an empty env at ``spec.env_dir``."""
        return self.dispatch.create_env(spec, interpreter)

    def install(self, spec: EnvSpec, env: EnvInfo) -> tuple[EnvInfo, dict[str, str]]:
        """Phase *install*: the dependencies; returns the env (with what the install recorded
        in its data) and the installed packages."""
        result = self.dispatch.install_deps(spec, env)
        if result is None:
            return env, {}
        if result.data:
            env = attrs.evolve(env, data={**env.data, **result.data})
        return env, dict(result.packages)

    def check(self, spec: EnvSpec, env: EnvInfo) -> None:
        """Phase *check*: a deep health check; an unhealthy env is never published."""
        spec.progress("check", "Checking the environment")
        health = self.dispatch.health_check(spec, env, deep=True)
        if not health.ok:
            raise InstallFailed(
                f"{spec.plugin_name}: the new env failed its health check: {health.describe()}"
            )

    def mark(
        self,
        spec: EnvSpec,
        env: EnvInfo,
        packages: Mapping[str, str],
        key: str,
        inputs: Mapping[str, Any],
        fingerprint: str,
    ) -> Marker:
        """Phase *mark*: the marker, written last, says the env is complete."""
        marker = Marker(
            fingerprint=fingerprint,
            request_key=key,
            runtime=spec.runtime,
            env=env,
            packages=dict(packages),
            created_at=now_iso(),
            plugin=spec.plugin_name,
            # Never a password: an index URL in an install_command, say, is kept without it.
            inputs=_without_credentials(dict(inputs)),
        )
        self.store.write_marker(spec.env_dir, marker)
        return marker

    def publish(self, spec: EnvSpec) -> None:
        """Phase *publish*: the plugin's pointer moves to ``spec.env_dir``."""
        self.store.record_origin(spec.plugin_name, spec.plugin_dir)
        self.store.publish(spec.plugin_name, spec.env_dir)


def _without_credentials(value: Any) -> Any:
    """``value`` (JSON data) with ``user:password@`` dropped from every URL in it."""
    if isinstance(value, dict):
        return {k: _without_credentials(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_credentials(v) for v in value]
    return strip_credentials(value)
