"""Built-in specs (package data): each `NAME.toml` here is launchable as `wb launch NAME`."""
