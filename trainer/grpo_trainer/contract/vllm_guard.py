"""The job's vLLM answers only whoever holds its key, on every path but its probes.

vLLM's own key (``--api-key``, ``$VLLM_API_KEY``) guards only paths under /v1, /v2,
/inference and /cohere. The server also answers, unauthenticated, ``POST /adapters``
and ``DELETE /adapters/<name>`` (the SageMaker routes of runtime LoRA updating: load an
adapter from any path under any name), ``POST /invocations`` (generation), /tokenize
and more. This ASGI middleware, given to vLLM with ``--middleware``, asks for the same
key (``Authorization: Bearer <key>``) on every request except GET and HEAD of /health
(the kubelet's probes) and /metrics (Prometheus).

vLLM imports it as a file of its own (``grpo_vllm_guard.py`` on its PYTHONPATH: from the
job's ConfigMap in a pod, from the run directory locally), so it uses the standard
library only: it runs in vLLM's image, where this package is not installed.

An inference pool's server also answers for the finished jobs' results the pool serves
(spec.serve), listed by the operator in a file of the pool's ConfigMap
(``$GRPO_SERVED_RESULTS``: ``{"<job>": "<its result adapter>"}``, which the kubelet keeps
current in the mounted volume). Imported with the middleware, before vLLM builds its model
registry, this module registers a LoRA resolver (vLLM's plugin interface, consulted for a
model name the server does not know while runtime LoRA updating is on) that loads a listed
result on its first request: a server restarted or made again serves every listed result
without anyone loading it, and a listed folder that is missing fails only requests for that
name. A result taken off the list (serve turned off, the job deleted) is no longer resolved,
and the guard unloads it at the next request the server gets (it sees the list's file
change; the operator holds no key to unload it itself).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

KEY_ENV = "VLLM_API_KEY"  # vLLM's own key variable: one key for its /v1 check and this one
SERVED_RESULTS_ENV = "GRPO_SERVED_RESULTS"  # a pool's server: the file listing the results it serves
SERVED_RESULTS_FILE = "served-results.json"  # that file's name in the pool's ConfigMap (beside this one)
ADAPTER_CONFIG = "adapter_config.json"  # what makes a folder a PEFT adapter
OPEN_PATHS = frozenset({"/health", "/metrics", "/metrics/"})
OPEN_METHODS = frozenset({"GET", "HEAD"})

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

_UNAUTHORIZED = b'{"error":"Unauthorized: this server needs the job\'s key (Authorization: Bearer <key>)"}'


class RequireKey:
    """ASGI middleware: 401 for any request without the key in ``$VLLM_API_KEY``, except the open probes."""

    def __init__(self, app: App) -> None:
        key = os.environ.get(KEY_ENV, "")
        if not key:  # fail closed: no request gets through a guard without a key
            raise RuntimeError(f"grpo_vllm_guard: ${KEY_ENV} is unset, so the server would answer anyone")
        self.app = app
        self._digest = hashlib.sha256(key.encode()).digest()
        listing = os.environ.get(SERVED_RESULTS_ENV)
        self._served = served_results(listing) if listing else None  # a pool's server: what it serves

    def authorized(self, scope: Scope) -> bool:
        for name, value in scope.get("headers") or ():
            if name.lower() == b"authorization":
                scheme, _, token = bytes(value).decode("latin-1").partition(" ")
                given = hashlib.sha256(token.strip().encode("latin-1")).digest()
                return scheme.lower() == "bearer" and hmac.compare_digest(given, self._digest)
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope.get("type")
        if kind not in ("http", "websocket"):  # lifespan
            return await self.app(scope, receive, send)
        probe = kind == "http" and scope.get("path") in OPEN_PATHS and scope.get("method") in OPEN_METHODS
        if probe or self.authorized(scope):
            if self._served is not None:  # the probes too: a pool with no client still unloads what it drops
                await self._served.unload_withdrawn(scope.get("app"))
            return await self.app(scope, receive, send)
        if kind == "websocket":
            await send({"type": "websocket.close", "code": 1008})  # policy violation
            return
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(_UNAUTHORIZED)).encode()),
            (b"www-authenticate", b"Bearer"),
        ]
        await send({"type": "http.response.start", "status": 401, "headers": headers})
        await send({"type": "http.response.body", "body": _UNAUTHORIZED})


class ServedResults:
    """A pool's list of served results (``$GRPO_SERVED_RESULTS``: name -> adapter folder), read again when its
    file changes (the kubelet swaps a ConfigMap's files for new ones), and the names it has dropped."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self._listed: dict[str, str] = {}
        self._withdrawn: set[str] = set()  # dropped from the list, not unloaded yet

    def listed(self) -> dict[str, str]:
        """The list as it is now (as last read, while the file cannot be read)."""
        try:
            stat = os.stat(self.path)
            if (stat.st_mtime_ns, stat.st_ino) == self._stamp:
                return self._listed
            with open(self.path, encoding="utf-8") as fh:
                doc = json.load(fh)
        except (OSError, ValueError):
            return self._listed
        listed = {k: v for k, v in doc.items() if isinstance(v, str)} if isinstance(doc, dict) else {}
        self._withdrawn = (self._withdrawn | set(self._listed) - set(listed)) - set(listed)
        self._stamp, self._listed = (stat.st_mtime_ns, stat.st_ino), listed
        return listed

    def adapter(self, name: str) -> str | None:
        """The adapter folder listed for ``name`` (None: not listed, or its folder holds no adapter)."""
        path = self.listed().get(name)
        return path if path is not None and os.path.isfile(os.path.join(path, ADAPTER_CONFIG)) else None

    def take_withdrawn(self) -> list[str]:
        """The names dropped from the list since the last call (and not listed again)."""
        self.listed()
        names, self._withdrawn = sorted(self._withdrawn), set()
        return names

    async def unload_withdrawn(self, app: Any) -> list[str]:
        """Unload from vLLM (``app``: its API server) the results dropped from the list; the names unloaded."""
        models = getattr(getattr(app, "state", None), "openai_serving_models", None)
        names = self.take_withdrawn() if models is not None else []
        unloaded = [n for n in names if n in models.lora_requests] if models is not None else []
        if not unloaded:
            return []
        from vllm.entrypoints.serve.lora.protocol import UnloadLoRAAdapterRequest

        for name in unloaded:
            await models.unload_lora_adapter(UnloadLoRAAdapterRequest(lora_name=name))
        return unloaded


_served: dict[str, ServedResults] = {}  # by list file: the resolver's and the guard's are one


def served_results(path: str) -> ServedResults:
    """The one reader of the list file ``path`` in this process."""
    return _served.setdefault(path, ServedResults(path))


def register_served_results() -> bool:
    """Register the resolver of ``$GRPO_SERVED_RESULTS`` with vLLM (a pool's server; False elsewhere)."""
    listing = os.environ.get(SERVED_RESULTS_ENV)
    if not listing:
        return False
    from vllm.lora.request import LoRARequest
    from vllm.lora.resolver import LoRAResolver, LoRAResolverRegistry

    served = served_results(listing)

    class ServedResultsResolver(LoRAResolver):  # type: ignore[misc]
        async def resolve_lora(self, base_model_name: str, lora_name: str) -> Any:
            path = served.adapter(lora_name)
            # vLLM gives the request its own adapter id before loading it
            return None if path is None else LoRARequest(lora_name=lora_name, lora_int_id=1, lora_path=path)

    LoRAResolverRegistry.register_resolver("grpo-served-results", ServedResultsResolver())
    return True


register_served_results()
