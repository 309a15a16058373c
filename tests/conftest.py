"""ally's own tests use the fixtures its pytest plugin (ally_core.testing) ships."""
