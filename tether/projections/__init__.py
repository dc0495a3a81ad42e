"""tether.projections: see docs/architecture.md; built by a later issue."""
