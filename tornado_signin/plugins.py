"""One loader for every entry-point group: token stores and confirmation hubs.

A plugin is a class (or factory) registered in an entry-point group, found at
start-up by an explicit call — the built-in backends use the same groups as
third-party plugins:

- ``tornado_signin.backends`` — token stores (:class:`~tornado_signin.store.TokenStore`),
  configured under ``store:``;
- ``tornado_signin.hubs`` — confirmation hubs (:class:`~tornado_signin.hub.ConfirmationHub`),
  configured under ``hub:``.

:func:`load` builds one with keyword-only options checked against the
factory's signature before the call (a misspelt option fails naming
``store.<option>`` / ``hub.<option>``); an unknown name names the group and
lists the installed names; a missing optional dependency gives the install
command. :func:`installed_backends` lists every group for ``tornado-signin
backends``.

Example::

    from tornado_signin.plugins import STORES, load
    from tornado_signin.store import TokenStore

    store = load(STORES, "sql", {"url": "sqlite:///tokens.sqlite3"}, base=TokenStore)
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from .errors import ConfigError

__all__ = ["PluginGroup", "STORES", "HUBS", "GROUPS", "BackendInfo", "entry_points", "installed_backends", "load",
           "option_names", "creation_option"]

#: The distribution whose extras provide the built-in backends' dependencies.
DISTRIBUTION = "tornado-signin"


@dataclass(frozen=True)
class PluginGroup:
    """An entry-point group: its name, the config section of its options, and what a plugin is called."""

    name: str
    config_key: str
    kind: str


STORES = PluginGroup("tornado_signin.backends", "store", "token store")
HUBS = PluginGroup("tornado_signin.hubs", "hub", "hub")
GROUPS = (STORES, HUBS)


@dataclass(frozen=True)
class BackendInfo:
    """One installed plugin, as ``tornado-signin backends`` lists it."""

    name: str
    module: str
    distribution: str | None
    loadable: bool
    problem: str | None = None
    install_hint: str | None = None
    #: The entry-point group (``tornado_signin.backends`` or ``tornado_signin.hubs``).
    group: str = STORES.name


def entry_points(group: PluginGroup) -> dict[str, metadata.EntryPoint]:
    """Return the entry points registered in ``group``, by name."""
    return {ep.name: ep for ep in metadata.entry_points(group=group.name)}


def _install_hint(ep: metadata.EntryPoint, exc: ImportError) -> str:
    if ep.dist is not None and ep.dist.name == DISTRIBUTION:
        return f"pip install '{DISTRIBUTION}[{ep.name}]'"
    return f"pip install {exc.name}" if exc.name else f"reinstall {ep.dist.name if ep.dist else ep.module}"


def installed_backends(groups: Iterable[PluginGroup] = GROUPS) -> list[BackendInfo]:
    """Return every plugin registered in ``groups`` (stores, then hubs), each tried for import.

    A plugin that fails to import is listed with the problem (and, for a
    missing dependency, the install command); it never hides the others.
    """
    infos = []
    for group in groups:
        for name, ep in sorted(entry_points(group).items()):
            dist = ep.dist.name if ep.dist is not None else None
            try:
                ep.load()
            except ImportError as exc:
                hint = _install_hint(ep, exc) if dist == DISTRIBUTION else None
                infos.append(BackendInfo(name, ep.module, dist, False, f"missing dependency: {exc.name or exc}", hint,
                                         group.name))
            except Exception as exc:  # a broken plugin must not hide the others
                infos.append(BackendInfo(name, ep.module, dist, False, f"cannot be imported: {exc}", None,
                                         group.name))
            else:
                infos.append(BackendInfo(name, ep.module, dist, True, None, None, group.name))
    return infos


def option_names(group: PluginGroup, name: str) -> list[str] | None:
    """Return the option names the plugin ``name`` of ``group`` takes, or None when it takes any or cannot tell.

    None also when the plugin is not installed or cannot be imported (a
    missing extra): :func:`load` reports that, with the install command.
    """
    ep = entry_points(group).get(name)
    if ep is None:
        return None
    try:
        parameters = inspect.signature(ep.load()).parameters
    except Exception:  # noqa: BLE001 - load() reports it with its cause
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return None
    return [n for n, p in parameters.items() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]


def creation_option(group: PluginGroup, name: str) -> str | None:
    """Return the option that lets the plugin ``name`` of ``group`` create its storage, or None when it has none.

    A plugin names it in its ``creation_option`` attribute (the file store:
    ``create_directory``); ``create_table`` when it names none (the SQL and
    DynamoDB stores). It counts only when the plugin takes that option.
    """
    names = option_names(group, name)
    if names is None:
        return None
    option = getattr(entry_points(group)[name].load(), "creation_option", "create_table")
    return option if option in names else None


def _check_options(factory: Any, group: PluginGroup, name: str, options: Mapping[str, Any]) -> None:
    """Raise ConfigError naming the option when ``options`` do not fit ``factory``'s signature.

    Checked before the call, so that a bug inside a constructor is not
    misreported as a configuration error.
    """
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # no introspectable signature: the call decides
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    accepted = {n for n, p in parameters.items() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
    for option in sorted(set(options) - accepted):
        raise ConfigError(f"{group.config_key}.{option}",
                          f"unknown option of {group.kind} {name!r} (valid: {', '.join(sorted(accepted)) or 'none'})")
    for option, parameter in parameters.items():
        if option in accepted and parameter.default is inspect.Parameter.empty and option not in options:
            raise ConfigError(f"{group.config_key}.{option}", f"is required by {group.kind} {name!r}")


def load(group: PluginGroup, name: str, options: Mapping[str, Any] | None = None, *, base: type) -> Any:
    """Build the plugin registered as ``name`` in ``group`` with ``options``; return it (an instance of ``base``).

    Raise ConfigError naming ``<section>.backend`` when no such plugin is
    installed (the message names the group and lists the installed names),
    when its dependencies are missing (the message gives the install command)
    or when it does not build a ``base``; naming ``<section>.<option>`` when an
    option is unknown or a required one is missing.
    """
    options = dict(options or {})
    key = f"{group.config_key}.backend"
    eps = entry_points(group)
    if name not in eps:
        installed = ", ".join(sorted(eps)) or "none"
        raise ConfigError(key, f"no {group.kind} {name!r} in entry-point group {group.name!r} (installed: {installed})")
    ep = eps[name]
    try:
        factory = ep.load()
    except ImportError as exc:
        raise ConfigError(key, f"{group.kind} {name!r} needs a missing dependency ({exc.name or exc}): "
                               f"{_install_hint(ep, exc)}") from exc
    _check_options(factory, group, name, options)
    plugin = factory(**options)
    if not isinstance(plugin, base):
        raise ConfigError(key, f"{ep.value} does not build a {base.__name__}")
    return plugin
