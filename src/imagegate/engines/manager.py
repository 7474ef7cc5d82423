"""Keeps engines warm and within a memory budget.

Engines are keyed by ``(engine_key, source)``: two catalog models that point at the same weights
and pipeline share one warm engine. Engines with different keys on the same weights (FLUX.2 [dev]'s
text-to-image, edit, relight and trainer; Qwen-Image's text-to-image and edit) share the loaded
components themselves through the manager's :class:`~imagegate.engines.diffusers_base.ComponentCache`,
so the weights sit in memory once, and the budget counts them once: used memory is the union of the
engines' allocations (``engine.memory_blocks()``; engines without it count ``memory_bytes``). When
loading another engine would push that over the budget, the least recently used engines are unloaded
first. A model bigger than the whole budget is still loaded (alone): refusing it would make it
unservable.

Factories receive ``options`` (the :class:`~imagegate.engines.diffusers_base.EngineOptions` given to
the manager) and ``components`` (the shared cache) when their signature names them.
"""

from __future__ import annotations

import inspect
import logging
import threading
from collections import OrderedDict
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Any

from imagegate.engines.base import Engine
from imagegate.engines.registry import resolve_factory

logger = logging.getLogger(__name__)

WarmKey = tuple[str, str]  # (engine_key, source): one warm engine each


@dataclass(frozen=True)
class LoadedEngine:
    engine_key: str
    source: str
    model_id: str
    memory_bytes: int


class ModelManager:
    def __init__(
        self,
        device: str,
        dtype: str,
        memory_budget_bytes: int = 0,
        *,
        engine_options: Any = None,
    ) -> None:
        """``engine_options``: an :class:`~imagegate.engines.options.EngineOptions` (or a mapping of its
        fields), passed to every diffusers engine factory; ``None`` keeps the engines' defaults."""
        self.device = device
        self.dtype = dtype
        self.memory_budget_bytes = max(0, int(memory_budget_bytes))
        self.engine_options = engine_options
        self._components: Any = None  # the ComponentCache, created on first load (imports torch)
        self._engines: OrderedDict[WarmKey, Engine] = OrderedDict()  # least recently used first
        self._model_ids: dict[WarmKey, str] = {}
        # Sizes of engines loaded before, so a reload can make room before it allocates.
        self._known_bytes: dict[WarmKey, int] = {}
        self._lock = threading.Lock()
        # One lock per key so two workers asking for the same cold model load it once, while a
        # slow load of one model does not block requests for models that are already warm.
        self._load_locks: dict[WarmKey, threading.Lock] = {}

    def get(self, model_id: str, engine_key: str, source: str) -> Engine:
        """The warm engine for ``(engine_key, source)``, loading it (and evicting others) if needed.

        An engine evicted by another thread after ``get`` returned it raises ``EngineError`` when
        called; the job is then retried like any other system error.
        """
        key = (engine_key, source)
        with self._lock:
            engine = self._touch(key)
            if engine is not None:
                return engine
            load_lock = self._load_locks.setdefault(key, threading.Lock())
        with load_lock:
            with self._lock:
                engine = self._touch(key)
                if engine is not None:
                    return engine
                victims = self._pop_victims(self._expected_bytes(key), keep=None)
            _unload(victims)
            engine = self._load(model_id, engine_key, source)
            with self._lock:
                self._engines[key] = engine
                self._model_ids[key] = model_id
                self._known_bytes[key] = int(engine.memory_bytes)
                victims = self._pop_victims(0, keep=key)
            _unload(victims)
            return engine

    def loaded(self) -> list[LoadedEngine]:
        """Warm engines, least recently used first."""
        with self._lock:
            return [
                LoadedEngine(engine_key, source, self._model_ids[(engine_key, source)], int(engine.memory_bytes))
                for (engine_key, source), engine in self._engines.items()
            ]

    @property
    def used_bytes(self) -> int:
        with self._lock:
            return self._used_bytes()

    def unload(self, engine_key: str, source: str) -> bool:
        with self._lock:
            engine = self._engines.pop((engine_key, source), None)
            self._model_ids.pop((engine_key, source), None)
        if engine is None:
            return False
        engine.unload()
        return True

    def unload_all(self) -> None:
        with self._lock:
            engines = list(self._engines.items())
            self._engines.clear()
            self._model_ids.clear()
        _unload(engines)

    # -- internals (callers hold self._lock unless noted)

    def _used_bytes(self) -> int:
        blocks: dict[Hashable, int] = {}
        for engine in self._engines.values():
            blocks.update(_memory_blocks(engine))
        return sum(blocks.values())

    def _expected_bytes(self, key: WarmKey) -> int:
        """What loading ``key`` again will add: its last size, less what warm engines on the same
        weights hold (it will share that rather than load it)."""
        known = self._known_bytes.get(key, 0)
        if not known:
            return 0
        blocks: dict[Hashable, int] = {}
        for (_, source), engine in self._engines.items():
            if source == key[1]:
                blocks.update(_memory_blocks(engine))
        return max(0, known - sum(blocks.values()))

    def _touch(self, key: WarmKey) -> Engine | None:
        engine = self._engines.get(key)
        if engine is not None:
            self._engines.move_to_end(key)
        return engine

    def _pop_victims(self, incoming_bytes: int, keep: WarmKey | None) -> list[tuple[WarmKey, Engine]]:
        """Remove least-recently-used engines until ``incoming_bytes`` more fit in the budget.

        They are unloaded by the caller after the manager lock is released: unloading waits for a
        running call on that engine, which must not stall every other ``get``.
        """
        victims: list[tuple[WarmKey, Engine]] = []
        if not self.memory_budget_bytes:
            return victims
        while self._used_bytes() + incoming_bytes > self.memory_budget_bytes:
            victim = next((k for k in self._engines if k != keep), None)
            if victim is None:
                break
            victims.append((victim, self._engines.pop(victim)))
            logger.info(
                "evicting %s (%s) to stay within the memory budget", self._model_ids.pop(victim, "?"), victim[0]
            )
        return victims

    def _load(self, model_id: str, engine_key: str, source: str) -> Engine:
        """Called without the manager lock."""
        factory = resolve_factory(engine_key)
        kwargs: dict[str, Any] = {"device": self.device, "dtype": self.dtype}
        if _accepts_model_id(factory):
            kwargs["model_id"] = model_id
        if _names_parameter(factory, "options") and self.engine_options is not None:
            kwargs["options"] = self.engine_options
        if _names_parameter(factory, "components"):
            kwargs["components"] = self._component_cache()
        logger.info("loading %s (%s) from %s", model_id, engine_key, source)
        return factory(source, **kwargs)


    def _component_cache(self) -> Any:
        with self._lock:
            if self._components is None:
                from imagegate.engines.diffusers_base import ComponentCache

                self._components = ComponentCache()
            return self._components


def _memory_blocks(engine: Engine) -> Mapping[Hashable, int]:
    blocks = getattr(engine, "memory_blocks", None)
    if callable(blocks):
        found = blocks()
        if found or not int(engine.memory_bytes):
            return found
    return {("engine", id(engine)): int(engine.memory_bytes)}


def _names_parameter(factory: Any, name: str) -> bool:
    try:
        return name in inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False


def _unload(engines: list[tuple[WarmKey, Engine]]) -> None:
    for _, engine in engines:
        engine.unload()


def _accepts_model_id(factory: Any) -> bool:
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False
    return "model_id" in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())
