"""CrypTen's settings read at plain-attribute speed.

CrypTen reads its omegaconf settings inside every operation (``cfg.mpc.provider`` in each
product, ``cfg.communicator.verbose`` in each message, ``cfg.encoder.precision_bits`` ...):
~24,000 reads in a 2-layer SmolLM2 forward, each a trip through omegaconf's node
resolution, ~20 % of the owner's time there (reports/speed/, ``--profile``).  The settings
almost never change, so :func:`cached_getattribute` (installed on ``CrypTenConfig`` by
:mod:`mpc.crypten_seam`) answers reads from plain dicts built once per configuration object.

Still right when settings change: CrypTen changes them by *replacing* its omegaconf object
(``set_config``, ``temp_override``, assignment of a new key), and the views are rebuilt when
the object is not the one they were built from; an assignment through a view
(``cfg.mpc.provider = "TTP"``) writes to the omegaconf node as before and updates the view.
"""

from __future__ import annotations

from omegaconf import DictConfig

_VIEWS = "_secptune_views"  # instance attribute: (the omegaconf object, its View)


class View:
    """One settings section: reads from a dict, writes through to the omegaconf node."""

    __slots__ = ("_node", "_values")

    def __init__(self, node: DictConfig):
        object.__setattr__(self, "_node", node)
        object.__setattr__(self, "_values", {key: _wrap(node[key]) for key in node})

    def __getattr__(self, name: str):
        try:
            return self._values[name]
        except KeyError:
            return getattr(self._node, name)  # omegaconf's own answer (and error) for anything else

    def __setattr__(self, name: str, value) -> None:
        setattr(self._node, name, value)
        self._values[name] = _wrap(self._node[name])

    __getitem__ = __getattr__
    __setitem__ = __setattr__

    def __repr__(self) -> str:
        return f"View({self._values!r})"


def _wrap(value):
    return View(value) if isinstance(value, DictConfig) else value


def _view(config) -> View:
    state = config.__dict__
    config_object = state["config"]
    cached = state.get(_VIEWS)
    if cached is None or cached[0] is not config_object:
        cached = (config_object, View(config_object))
        state[_VIEWS] = cached
    return cached[1]


def _class_names(klass: type) -> frozenset:
    return frozenset(name for k in klass.__mro__ for name in vars(k))


def cached_getattribute(_original):
    """``CrypTenConfig.__getattribute__`` with the settings read from :class:`View` s
    (a section name is looked up in the current view first: no exception on the hot path;
    the class's own attributes and the instance's keep precedence, as before)."""
    own: dict[type, frozenset] = {}

    def __getattribute__(self, name: str):
        state = object.__getattribute__(self, "__dict__")
        cached = state.get(_VIEWS)
        if cached is not None and cached[0] is state.get("config") and name not in state:
            values = cached[1]._values
            if name in values:
                klass = type(self)
                if name not in (own.get(klass) or own.setdefault(klass, _class_names(klass))):
                    return values[name]
        try:
            return object.__getattribute__(self, name)
        except AttributeError:
            pass
        result = _view(self)
        for key in name.split("."):
            result = getattr(result, key)
        return result

    return __getattribute__
