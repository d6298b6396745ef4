"""Display and operator commands only: the Qt viewer (`viewer`), the Nion Swift panel
(`nion`), and what both decode from status messages (`slices`, `alignment`, `fields`).
Never the solver."""

__all__ = ["alignment", "fields", "nion", "screenshot", "slices", "viewer"]
