"""Plugins that ship MCP servers: Claude-style plugins, each server in an env of its own.

A Claude-style plugin (``.claude-plugin/plugin.json`` and a ``.mcp.json``) in a plugin dir is
discovered beside ally's own ``plugin.json`` plugins. Each of its stdio servers that starts
through a package runner (``uvx``, ``npx``) or an interpreter with a dependency file gets an
env in ally's store, pinned at install, ready before the host asks, and started offline. See
docs/mcp-plugins.md.

Modules: :mod:`.manifest` (reading plugins), :mod:`.launchers` (what starts a server),
:mod:`.servers` (envs, pins, records), :mod:`.launch` (``ally mcp launch``), :mod:`.config`
(``ally mcp config``), :mod:`.warm_launch` (the start from a launch record, standard library
only), :mod:`.bundles` (offline bundles) and :mod:`.commands` (the command line).
"""
