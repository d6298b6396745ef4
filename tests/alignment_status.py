"""A published `alignment` status (LiveAligner.status(), docs/protocol.md) and what the
viewer and the Nion Swift panel must make of it: the tests' shared reference."""

# As LiveAligner.status() publishes it: HAADF tilts in arrival order (dose-symmetric).
ALIGNMENT = {
    "n_tilts": 5, "angles": [0.0, -20.0, 20.0, -40.0, 40.0],
    "shifts_px": [[0.0, 0.0], [0.412, -1.25], [-0.3, 1.1], [0.9, -2.4], [-0.7, 2.05]],
    "sources": ["centre", "previous", "previous", "reprojection", "refined"],
    "chem_own_px": {"0": [0.05, -0.02]}, "rotation_deg": 0.0, "axis_offset_px": 1.25,
    "refinements": 7, "model_refinements": 3, "last_update_px": 0.0123}
SUMMARY = "axis offset +1.25 px · 3 model refinements · last update 0.0123 px"
SORTED_ANGLES = [-40.0, -20.0, 0.0, 20.0, 40.0]
SORTED_SHIFTS = [[0.9, -2.4], [0.412, -1.25], [0.0, 0.0], [-0.3, 1.1], [-0.7, 2.05]]
