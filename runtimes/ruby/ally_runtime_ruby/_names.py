"""The names of the ``ruby`` runtime that its hooks answer with on every load (nothing else
imported: ally imports every runtime at each start)."""

from __future__ import annotations

__all__ = ["LAYOUT", "LOCK_NAME", "NAMES", "RUBY_ENV_VAR"]

NAMES = ("ruby",)
#: The hash lock an offline bundle carries beside its ``.gem`` files and ``Gemfile.lock``.
LOCK_NAME = "gems.lock.json"
#: Bumped when the layout of an env changes, so that older envs are rebuilt.
LAYOUT = 1
#: Names a Ruby to use instead of searching (a path, or a command name looked up on ``PATH``).
RUBY_ENV_VAR = "ALLY_RUBY"
