"""The panel's layout (Declarative UI description): connection row, then three groups —
the series (progress bars of the tilts and the dose), the reconstruction (processing time
per tilt, lag behind the newest tilt, how far the panel is behind the controller, costs,
alignment) and the advisor (its advice, Accept / Skip / Force, auto-accept, Pause / Resume).
The images themselves are Swift data items in Swift's own display panels (dataitems.py).

Every `@binding(name)` names a property of `FusetomoPanelHandler` (panel.py); every
`on_clicked` one of its methods."""

from __future__ import annotations

import gettext
from typing import Any

from nion.ui import Declarative

_ = gettext.gettext

__all__ = ["panel_view"]


def panel_view() -> Any:
    u = Declarative.DeclarativeUI()

    def label(prop: str, **kw: Any) -> Any:
        return u.create_label(text=f"@binding({prop})", name=prop + "_label", **kw)

    def bar(prop: str) -> Any:
        return u.create_progress_bar(value=f"@binding({prop})", minimum=0, maximum=100,
                                     name=prop + "_bar")

    endpoint_row = u.create_row(
        u.create_line_edit(text="@binding(endpoint)", name="endpoint_edit",
                           placeholder_text="tcp://127.0.0.1:PORT (controller status)"),
        u.create_push_button(text="@binding(connect_label)", name="connect_button",
                             on_clicked="connect_clicked"),
        spacing=6)
    series = u.create_group(u.create_column(
        label("series_text"), label("tilts_text"), bar("haadf_progress"), label("tilt_text"),
        label("dose_text"), bar("dose_progress"), spacing=4), title=_("Series"))
    recon = u.create_group(u.create_column(
        label("timing_text", word_wrap=True), label("behind_text"), label("costs_text"),
        label("alignment_text"), spacing=4), title=_("Reconstruction"))
    answers = u.create_row(
        u.create_push_button(text=_("Accept"), name="accept_button",
                             on_clicked="accept_clicked", enabled="@binding(can_answer)"),
        u.create_push_button(text=_("Skip"), name="skip_button",
                             on_clicked="skip_clicked", enabled="@binding(can_answer)"),
        u.create_push_button(text=_("Force"), name="force_button",
                             on_clicked="force_clicked", enabled="@binding(can_command)",
                             tool_tip=_("acquire a spectrum image here now")),
        u.create_stretch(),
        u.create_check_box(text=_("Auto-accept"), name="auto_accept_box",
                           checked="@binding(auto_accept)",
                           tool_tip=_("answer every advice by following it")),
        spacing=6)
    run_row = u.create_row(
        u.create_push_button(text=_("Pause"), name="pause_button",
                             on_clicked="pause_clicked", enabled="@binding(can_command)"),
        u.create_push_button(text=_("Resume"), name="resume_button",
                             on_clicked="resume_clicked", enabled="@binding(can_command)"),
        u.create_stretch(), spacing=6)
    advice = u.create_group(u.create_column(
        label("advice_text", word_wrap=True), answers, run_row,
        label("result_text", word_wrap=True), spacing=4), title=_("Advisor"))
    return u.create_column(endpoint_row, label("connection_text"), series, recon, advice,
                           u.create_stretch(), spacing=6, margin=8)
