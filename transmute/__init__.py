"""transmute: translate audio and images between domains through plugin stages."""

__version__ = "0.1.0"

# The version of what plugins use (the modules docs/writing-plugins.md lists as the
# plugin API). The minor grows when something is added, the major when something a
# plugin may use changes or goes. A plugin states what it needs with
# `requires_api = ">=1.0"` in its entry-point module.
PLUGIN_API_VERSION = "1.0"
