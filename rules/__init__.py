"""Built-in detection rules, shipped as package data (``*.toml``)."""
