"""The other parties, in the package: specimens (`specimens`), the forward model
(`forward`), a simulated microscope (`microscope`: the physics) and the simulated
instrument that serves it over the live protocol (`instrument`), and nionswift-usim with a
fusetomo specimen (`usim_tomo`, `usim_eels`)."""

__all__ = ["forward", "instrument", "microscope", "specimens", "usim_eels",
           "usim_tomo"]
