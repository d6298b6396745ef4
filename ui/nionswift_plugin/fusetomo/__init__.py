"""Nion Swift plug-in entry for fusetomo.

Nion Swift 16 finds plug-ins only as modules of the `nionswift_plugin` namespace package
(`nion.swift.model.PlugInManager.load_plug_ins` iterates `nionswift_plugin.__path__`; there is
no entry-point mechanism), imports each and calls its module-level `run()`. This shim is
all that lives outside the `fusetomo` namespace; the code is in `fusetomo.ui.nion`.
"""

from fusetomo.ui.nion.panel import run, stop

__all__ = ["run", "stop"]
