"""The fusetomo panel for Nion Swift (Declarative UI; layout in view.py).

Connects to a controller's status PUB and shows the series state and progress, the current
tilt, dose used against the budget (e⁻/Å²), the solver's processing time per tilt and its lag
behind the newest tilt, how far the panel itself is behind the controller, the three cost
terms, the live alignment and the advisor's suggestion with Accept / Skip / Force (and Pause /
Resume), or, with Auto-accept checked, answers each advice itself by following it. Keeps
calibrated live data items (nm, counts/voxel) with the orthoslices of each element volume
and of its standard error, the timing per tilt and the alignment's shifts (dataitems.py),
put in the workspace's empty display panels when first made.

Threads: `ControllerLink` (link.py) receives on its own thread and hands the newest state to
the UI thread through `document_controller.queue_task` (one drain task at a time, never one
per message); everything here runs on the UI thread. `run()` registers the panel with
Swift's workspace (called by Swift's plug-in loader through `nionswift_plugin.fusetomo`),
`stop()` unregisters it.
"""

from __future__ import annotations

import gettext
import logging
import os
import time
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any

from nion.swift import DocumentController, Panel, Workspace
from nion.ui import Declarative
from nion.utils import Observable

from fusetomo.adapters.keys import keys_for
from fusetomo.ui.nion.dataitems import (
    AlignmentDataItem,
    SliceDataItems,
    TimingDataItem,
    place_in_empty_display_panel,
)
from fusetomo.ui.nion.link import ControllerLink, LinkParams, OperatorResult, Received, Task
from fusetomo.ui.nion.state import PanelDataError, PanelState
from fusetomo.ui.nion.view import panel_view

_ = gettext.gettext
log = logging.getLogger(__name__)

PANEL_ID = "fusetomo-panel"
KEYS_ENV = "FUSETOMO_KEYS"  # a keys folder (`fusetomo keys DIR`) for authenticated controllers
ENDPOINT_KEY = "fusetomo/status_endpoint"  # Swift's persistent settings: the last endpoint

# Read-only lines and flags the view binds to (`@binding(name)`), with their initial values.
_SHOWN: dict[str, Any] = {
    "connect_label": _("Connect"),
    "connection_text": _("not connected"),
    "series_text": "",
    "tilts_text": "",
    "tilt_text": "",
    "dose_text": "",
    "timing_text": "",
    "behind_text": "",
    "costs_text": "",
    "alignment_text": "",
    "advice_text": "",
    "result_text": "",
    "can_answer": False,
    "can_command": False,
    "haadf_progress": 0,
    "dose_progress": 0,
}
BEHIND_ROWS = 1000  # (topic, seconds behind) of the last shown messages, for the tests


class _Shown:
    """A read-only handler attribute that Declarative bindings observe (the handler calls
    notify_property_changed when it changes)."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, objtype: type | None = None) -> Any:
        return self if obj is None else obj._shown[self.name]


class FusetomoPanelHandler(Observable.Observable):
    """Declarative handler: the view (`ui_view`), what it shows, and its buttons."""

    connect_label = _Shown()
    connection_text = _Shown()
    series_text = _Shown()
    tilts_text = _Shown()
    tilt_text = _Shown()
    dose_text = _Shown()
    timing_text = _Shown()
    behind_text = _Shown()
    costs_text = _Shown()
    alignment_text = _Shown()
    advice_text = _Shown()
    result_text = _Shown()
    can_answer = _Shown()
    can_command = _Shown()
    haadf_progress = _Shown()
    dose_progress = _Shown()

    def __init__(self, document_controller: DocumentController.DocumentController, *,
                 endpoint: str = "", link_params: LinkParams | None = None,
                 link_factory: Callable[..., ControllerLink] = ControllerLink,
                 keys: str | None = None) -> None:
        """`keys`: the folder `fusetomo keys DIR` made, for a controller run with `--keys`
        (the panel then authenticates as its viewer); None: ${FUSETOMO_KEYS}, if set."""
        super().__init__()
        self._keys = keys if keys is not None else os.environ.get(KEYS_ENV) or None
        self._dc = weakref.ref(document_controller)
        self._endpoint = endpoint
        self._link_params = link_params
        self._link_factory = link_factory
        self._shown = dict(_SHOWN)
        self.state = PanelState()
        self.data_items = SliceDataItems()
        self.alignment_item = AlignmentDataItem()
        self.timing_item = TimingDataItem()
        self.link: ControllerLink | None = None
        self.n_messages = 0
        # how far behind the controller each shown message was: shown (data items updated)
        # minus published (its t_sent), seconds, newest last
        self.behind: deque[tuple[str, float]] = deque(maxlen=BEHIND_ROWS)
        self._auto_accept = False
        self._auto_answered: set[int] = set()
        self._closed = False
        self._refresh()
        self.ui_view = panel_view()

    # -- bound properties -------------------------------------------------------------------
    @property
    def endpoint(self) -> str:
        return self._endpoint

    @endpoint.setter
    def endpoint(self, value: str) -> None:
        value = (value or "").strip()
        if value != self._endpoint:
            self._endpoint = value
            self.notify_property_changed("endpoint")

    @property
    def auto_accept(self) -> bool:
        return self._auto_accept

    @auto_accept.setter
    def auto_accept(self, value: bool) -> None:
        value = bool(value)
        if value != self._auto_accept:
            self._auto_accept = value
            self.notify_property_changed("auto_accept")
            self._answer_automatically()

    @property
    def behind_s(self) -> float | None:
        """How far the panel was behind the controller when it last showed a message."""
        return self.behind[-1][1] if self.behind else None

    def _show(self, name: str, value: Any) -> None:
        if self._shown[name] != value:
            self._shown[name] = value
            self.notify_property_changed(name)

    def _refresh(self) -> None:
        s = self.state
        self._show("series_text", s.series_text())
        self._show("tilts_text", s.tilts_text())
        self._show("tilt_text", s.tilt_text())
        self._show("dose_text", s.dose_text())
        self._show("timing_text", s.timing_text())
        behind = self.behind_s
        self._show("behind_text", "panel: " + ("—" if behind is None else
                                               f"{behind:.2f} s behind the controller"))
        self._show("haadf_progress", s.haadf_progress())
        self._show("dose_progress", s.dose_progress())
        self._show("costs_text", s.costs_text())
        self._show("alignment_text", s.alignment_text())
        self._show("advice_text", s.advice_text())
        live = self.link is not None
        self._show("can_answer", live and s.can_answer())
        self._show("can_command", live and s.can_command())
        self._show("connect_label", _("Disconnect") if live else _("Connect"))
        self._show("connection_text", (f"{self.link.status_endpoint}: {self.n_messages} "
                                       "messages" if self.link else _("not connected")))

    # -- connection -------------------------------------------------------------------------
    def connect(self, endpoint: str | None = None, *,
                operator_endpoint: str | None = None) -> None:
        """Subscribe to a controller's status endpoint (replacing any current link).
        Operator commands go where its status messages say (`operator_endpoint`), or to
        `operator_endpoint` until one says otherwise."""
        self.disconnect()
        endpoint = (endpoint or self._endpoint).strip()
        self.endpoint = endpoint
        self.state, self.n_messages = PanelState(operator_endpoint=operator_endpoint), 0
        self.behind.clear()
        try:
            extra = {} if self._keys is None else {"curve": keys_for(self._keys, "viewer")}
            link = self._link_factory(endpoint, post=self._post, on_messages=self._on_messages,
                                      on_error=self._on_error, on_result=self._on_result,
                                      operator_endpoint=operator_endpoint,
                                      params=self._link_params, **extra)
            link.start()
        except ValueError as e:
            self._show("result_text", str(e))
            self._refresh()
            return
        self.link = link
        dc = self._dc()
        if dc is not None:
            dc.ui.set_persistent_string(ENDPOINT_KEY, endpoint)
        self._show("result_text", "")
        self._refresh()

    def disconnect(self) -> None:
        if self.link is not None:
            self.link.close()
            self.link = None
        self._refresh()

    def _post(self, task: Task) -> None:
        # Called on the link's thread: only hands the task over, never touches the UI.
        dc = self._dc()
        if dc is not None:
            dc.queue_task(task)

    # -- on the UI thread, from the link ------------------------------------------------------
    def _on_messages(self, items: list[Received]) -> None:
        """The newest message of each kind since the last call (link.Mailbox): applied in
        order of arrival, then the data items updated once, the labels refreshed, an open
        advice answered in auto-accept mode."""
        if self._closed:
            return
        self.n_messages += len(items)
        changed: set[str] = set()
        shown: list[tuple[str, Any]] = []
        for topic, header in items:
            try:
                changed |= self.state.apply(topic, header)
            except PanelDataError as e:
                self._show("result_text", f"{topic} message not shown: {e}")
                continue
            shown.append((topic, header.get("t_sent")))
        self._update_items(changed)
        now = time.time()
        for topic, t_sent in shown:
            if isinstance(t_sent, int | float) and not isinstance(t_sent, bool):
                self.behind.append((topic, max(now - float(t_sent), 0.0)))
        self._refresh()
        self._answer_automatically()

    def _update_items(self, changed: set[str]) -> None:
        dc = self._dc()
        if dc is not None and dc.document_model is not None:
            update_items(self, dc, changed)

    def _answer_automatically(self) -> None:
        """Auto-accept: an open advice not yet answered by this panel is accepted."""
        a = self.state.advice
        if (not self._auto_accept or self.link is None or a is None or not a.open
                or a.id in self._auto_answered or not self.state.can_answer()):
            return
        self._auto_answered.add(a.id)
        self.link.send("accept", advice_id=a.id)
        self._show("result_text", f"accept advice #{a.id}: sent (auto)")

    def _on_error(self, text: str) -> None:
        if not self._closed:
            self._show("result_text", text)

    def _on_result(self, r: OperatorResult) -> None:
        if self._closed:
            return
        what = r.action + ("" if r.advice_id is None else f" advice #{r.advice_id}")
        if r.ok:
            reason = (r.reply or {}).get("reason")
            self._show("result_text", f"{what}: {(r.reply or {}).get('status', 'done')}"
                       + (f" ({reason})" if reason else ""))
        else:
            self._show("result_text", f"{what} failed: {r.error}")

    # -- buttons (Declarative passes the widget) ------------------------------------------------
    def connect_clicked(self, widget: Any = None) -> None:
        if self.link is not None:
            self.disconnect()
        else:
            self.connect()

    def accept_clicked(self, widget: Any = None) -> None:
        self._answer("accept")

    def skip_clicked(self, widget: Any = None) -> None:
        self._answer("skip")

    def force_clicked(self, widget: Any = None) -> None:
        self._command("force")

    def pause_clicked(self, widget: Any = None) -> None:
        self._command("pause")

    def resume_clicked(self, widget: Any = None) -> None:
        self._command("resume")

    def _command(self, action: str) -> None:
        if self.link is None or not self.state.can_command():
            self._show("result_text", f"{action}: not connected to a running series")
            return
        self.link.send(action)
        self._show("result_text", f"{action}: sent")

    def _answer(self, action: str) -> None:
        advice = self.state.advice
        if self.link is None or advice is None or not self.state.can_answer():
            self._show("result_text", f"{action}: no open advice to answer")
            return
        self.link.send(action, advice_id=advice.id)
        self._show("result_text", f"{action} advice #{advice.id}: sent")

    def close(self) -> None:
        """Called by the DeclarativeWidget when the panel closes: stop the link first, so
        that nothing more is queued, then drop the data item references."""
        self._closed = True
        if self.link is not None:
            self.link.close()
            self.link = None
        self.data_items.forget()
        self.alignment_item.forget()


class FusetomoPanel(Panel.Panel):
    def __init__(self, document_controller: DocumentController.DocumentController,
                 panel_id: str, properties: dict[str, Any]) -> None:
        super().__init__(document_controller, panel_id, _("fusetomo"))
        endpoint = str(properties.get("endpoint") or
                       document_controller.ui.get_persistent_string(ENDPOINT_KEY, "") or "")
        self.handler = FusetomoPanelHandler(document_controller, endpoint=endpoint)
        self.widget = Declarative.DeclarativeWidget(document_controller.ui,
                                                    document_controller.event_loop, self.handler)

    def close(self) -> None:
        self.handler.close()  # idempotent; the widget's closer calls it again
        super().close()
        self.handler = None  # type: ignore[assignment]


def run() -> None:
    """Register the panel (Swift's plug-in loader calls this once at start-up)."""
    Workspace.WorkspaceManager().register_panel(FusetomoPanel, PANEL_ID, _("fusetomo"),
                                                ["left", "right"], "right", {"min_width": 320})


def stop() -> None:
    Workspace.WorkspaceManager().unregister_panel(PANEL_ID)


def update_items(h: FusetomoPanelHandler, dc: DocumentController.DocumentController,
                 changed: set[str]) -> None:
    """Update the live data items for what changed ('slices', 'std_slices', 'timing',
    'alignment'); a new one goes to an empty display panel."""
    s, model = h.state, dc.document_model

    def place(item: Any) -> None:
        place_in_empty_display_panel(dc, item)

    if "slices" in changed:
        h.data_items.update(model, "value", s.slices, series=s.series,
                            iteration=s.slices_iteration, calibration=s.calibration,
                            place=place)
    if "std_slices" in changed:
        h.data_items.update(model, "std", s.std_slices, series=s.series,
                            iteration=s.std_iteration, calibration=s.calibration, place=place)
    if "timing" in changed:
        h.timing_item.update(model, s.timing_rows, series=s.series, place=place)
    if "alignment" in changed and s.alignment is not None:
        h.alignment_item.update(model, s.alignment, series=s.series)
