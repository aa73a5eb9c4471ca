"""Command-line groups; each module exposes ``register(subparsers)`` and thin handlers."""
