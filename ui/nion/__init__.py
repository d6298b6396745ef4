"""The Nion Swift panel of fusetomo (docs/nionswift.md: `pip install -e ".[nion]"` in strict
editable mode, or a wheel): connects to a live
controller, shows its status and the advisor's suggestion with Accept / Skip / Force, and
keeps live data items with the orthoslices of each element and of its standard error.

- `state`: what the panel shows, pure Python (no Nion import).
- `link`: the worker thread holding the status SUB and the operator DEALER.
- `dataitems`: the live data items.
- `view`: the Declarative layout.
- `panel`: the Declarative UI handler, the panel, `run()` / `stop()` for Swift's loader.

Swift finds it through the thin `nionswift_plugin.fusetomo` package, which imports
`fusetomo.ui.nion.panel`.
"""

__all__: list[str] = []  # the panel is loaded by Swift through `nionswift_plugin.fusetomo`
