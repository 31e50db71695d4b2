"""Saved rqt perspectives for watching training: feature statistics, reward, and the observation image.

    rqt --perspective-file $(ros2 pkg prefix td3_drive)/share/td3_drive/config/rqt/td3_features.perspective
    rqt --perspective-file .../config/rqt/td3_features_image.perspective   # + rqt_image_view
    td3-drive rqt-perspective --namespace v0 --trainer-namespace "" -o v0.perspective   # a scale-out vehicle

Two files, because rqt does not degrade: a perspective naming a plugin that is not installed
(rqt_image_view is a separate package) left every plot of it empty on a real Humble.  The
default one needs rqt_plot only; the ``_image`` one adds the observation image.

The file is what rqt's "Perspectives > Export" writes: nested ``groups``/``keys``
whose values are Python ``repr`` strings.  Plugin settings use the keys rqt_plot
(``topics``, ``autoscroll``, ``plot_type``, ``x_limits``, ``y_limits``) and
rqt_image_view (``topic``, ``zoom1``, ``smooth_image``, ...) save themselves.
Topic names come from ``td3_drive.topics``, so the file cannot drift from the nodes;
``test_rqt`` checks the committed file against this generator.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from td3_drive.topics import Topics

#: the committed perspective for the default (single vehicle, no namespace)
DEFAULT_FILE = Path(__file__).resolve().parents[3] / "config" / "rqt" / "td3_features.perspective"
#: the same plots and rqt_image_view on /td3/observation/image
IMAGE_FILE = DEFAULT_FILE.with_name("td3_features_image.perspective")
MATPLOT = 1  # rqt_plot's backends: 0 PyQtGraph, 1 MatPlot, 2 QwtPlot; MatPlot ships with rqt_plot


def _value(value: Any) -> dict[str, str]:
    return {"type": "repr", "repr": repr(value)}


def _plugin(settings: dict[str, Any]) -> dict[str, Any]:
    return {"keys": {}, "groups": {"plugin": {"keys": {k: _value(v) for k, v in settings.items()}, "groups": {}}}}


def plots(vehicle: Topics, trainer: Topics) -> list[tuple[list[str], list[float]]]:
    """(rqt_plot field paths, y limits) of each plot."""
    def field(topic: str) -> str:
        return f"{topic}/data"  # std_msgs/Float32

    return [
        # feature L2 norms: LayerNorm keeps them near sqrt(dim)
        ([field(vehicle.features("actor", "l2_norm")), field(trainer.features("critic", "l2_norm")),
          field(vehicle.features("actor", "l2_norm_max"))], [0.0, 40.0]),
        # feature spread and dead units
        ([field(vehicle.features("actor", s)) for s in ("std", "dead_fraction", "mean")], [-1.0, 2.0]),
        # reward per step
        ([field(vehicle.reward)], [-2.0, 2.0]),
    ]


def perspective(namespace: str = "", trainer_namespace: str | None = None, image: bool = False) -> dict[str, Any]:
    """The perspective as a dict (json.dumps it).  ``trainer_namespace`` defaults to ``namespace``;
    ``image`` adds rqt_image_view (rqt_plot alone when false)."""
    vehicle = Topics(namespace=namespace)
    trainer = Topics(namespace=namespace if trainer_namespace is None else trainer_namespace)
    groups: dict[str, Any] = {}
    serials: dict[str, list[int]] = {"rqt_plot/Plot": []}
    for serial, (topics, y_limits) in enumerate(plots(vehicle, trainer), start=1):
        groups[f"plugin__rqt_plot__Plot__{serial}"] = _plugin(
            {"topics": topics, "autoscroll": True, "plot_type": MATPLOT, "x_limits": [0.0, 60.0],
             "y_limits": y_limits})
        serials["rqt_plot/Plot"].append(serial)
    if image:
        groups["plugin__rqt_image_view__ImageView__1"] = _plugin(
            {"topic": vehicle.observation_image, "zoom1": False, "dynamic_range": False, "max_range": 10.0,
             "publish_click_location": False, "mouse_pub_topic": "", "toolbar_hidden": False, "num_gridlines": 0,
             "smooth_image": False, "rotate": 0, "color_scheme": 0})
        serials["rqt_image_view/ImageView"] = [1]
    return {"keys": {}, "groups": {"pluginmanager": {"keys": {"running-plugins": _value(serials)},
                                                     "groups": groups}}}


def render(namespace: str = "", trainer_namespace: str | None = None, image: bool = False) -> str:
    return json.dumps(perspective(namespace, trainer_namespace, image), indent=2, sort_keys=True) + "\n"
