"""tether.middleware: see docs/architecture.md; built by a later issue."""
