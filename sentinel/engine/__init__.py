"""The rules engine: declarative rules (``rules/*.toml``) evaluated on events, on event time.

``rule`` loads and validates rule files; ``matcher`` compiles their field conditions;
``windows`` holds the bounded per-key state; ``engine`` wires them and emits findings, which
are events too (``event.kind = "alert"``).
"""
