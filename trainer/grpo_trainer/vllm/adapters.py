"""LoRA adapters on the shared volume and their hot-swap into vLLM.

Layout under ``<run_dir>/adapters/``::

    step-1/ step-2/ ...   PEFT adapter directories (adapter_config.json + adapter_model.safetensors)
    best.json             {"step": N, "score": s, "path": "step-N"}: the best adapter by validation,
                          written once a checkpoint holds step N (grpo_trainer.run.loop)
    improvements.json     [{"step", "score", "path"}, ...]: with grpo.checkpoint improvements, every
                          adapter that improved on the best before it, oldest first (never pruned)

The best adapter is named by a small JSON pointer file, not a symlink: it survives
any way of copying the volume (object stores, ``kubectl cp``, zip files drop or
break symlinks), and it is replaced atomically.

Each step's adapter is served by vLLM under a new name ``policy-v<step>``: reusing a
name for changed weights could reuse prefix-cache blocks of the old weights. On an
inference pool, where many jobs' adapters share one server, the names carry the job's
prefix (``<job>-policy-v<step>``), and a job loads and unloads only names with its own.

What vLLM serves is checked by name *and* path (``root`` in ``/v1/models``): an adapter
served under one of the run's names from another path (someone loaded theirs under it, or
a stale server) is unloaded and the run's own loaded anew, never sampled for training.
"""

from __future__ import annotations

import copy
import json
import logging
import re
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import httpx
import torch
from peft import get_peft_model_state_dict
from safetensors.torch import save_file as save_safetensors

from grpo_trainer.contract.config import VLLM_API_KEY_ENV, VLLMEndpoint
from grpo_trainer.run.atomic import remove_leftovers, staged_dir, write_text_atomic

log = logging.getLogger(__name__)

ADAPTERS_DIR = "adapters"
BEST_POINTER = "best.json"
IMPROVEMENTS_FILE = "improvements.json"
VERSION_PREFIX = "policy-v"
_STEP_DIR = re.compile(r"^step-(\d+)$")
_ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")

T = TypeVar("T")


def step_dir_name(step: int) -> str:
    return f"step-{step}"


def version_name(step: int, prefix: str = "") -> str:
    """The model name vLLM serves the adapter of ``step`` under (``prefix``: a job's on a shared pool)."""
    return f"{prefix}{VERSION_PREFIX}{step}"


def version_step(name: str, prefix: str = "") -> int | None:
    """The step of a ``<prefix>policy-v<step>`` name, None for any other model name (another job's too)."""
    head = f"{prefix}{VERSION_PREFIX}"
    if name.startswith(head) and name[len(head) :].isdigit():
        return int(name[len(head) :])
    return None


def unwrap_model(model: Any) -> torch.nn.Module:
    """The PEFT model inside a wrapper: DistributedDataParallel (``.module``) or a holder such as Policy (``.model``)."""
    while not hasattr(model, "peft_config"):
        inner = getattr(model, "module", None)
        if inner is None:
            inner = getattr(model, "model", None)
        if inner is None:
            raise TypeError(f"expected a PEFT model (or a wrapper of one), got {type(model).__name__}")
        model = inner
    return model


def save_peft_adapter(model: Any, out_dir: Path, base_model_name: str | None) -> None:
    """Write the active LoRA adapter of ``model`` as a vLLM-loadable PEFT directory.

    ``base_model_name`` replaces ``base_model_name_or_path`` in adapter_config.json:
    vLLM's filesystem resolver only serves an adapter whose value equals the server's
    ``--model``, and the trainer may have loaded the base from a different path.

    Built from PEFT's own pieces (the state dict, safetensors, the config's writer)
    instead of ``PeftModel.save_pretrained``, which also renders a model-card README
    from a Jinja template on every call: half of a small adapter's save time, for a
    file nobody reads. The files are the ones ``save_pretrained`` writes.
    """
    peft_model = unwrap_model(model)
    adapter = getattr(peft_model, "active_adapter", "default")
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = get_peft_model_state_dict(peft_model, adapter_name=adapter)
    weights = {key: tensor.contiguous() for key, tensor in weights.items()}
    save_safetensors(weights, str(out_dir / "adapter_model.safetensors"), metadata={"format": "pt"})
    config = copy.copy(peft_model.peft_config[adapter])  # the live config stays in training mode
    config.inference_mode = True
    if base_model_name is not None:
        config.base_model_name_or_path = base_model_name
    elif config.base_model_name_or_path is None:
        config.base_model_name_or_path = getattr(peft_model.base_model.model, "name_or_path", None) or None
    auto_mapping = None
    if config.task_type is None:  # as save_pretrained: tells AutoPeftModel the base class
        base_class = type(peft_model.base_model.model)
        auto_mapping = {"base_model_class": base_class.__name__, "parent_library": base_class.__module__}
    config.save_pretrained(str(out_dir), auto_mapping_dict=auto_mapping)


@dataclass(frozen=True)
class SavedAdapter:
    step: int
    path: Path
    seconds: float
    replaced: bool = False  # a directory for this step existed (re-run after resume) and was overwritten


@dataclass(frozen=True)
class ScoredAdapter:
    """An adapter on the volume with its validation score: the best, an improvement, or the last one."""

    step: int
    score: float
    path: Path


class AdapterStore:
    """The run's ``adapters/`` directory. Only one process (rank 0) writes it."""

    def __init__(self, run_dir: str | Path, base_model_name: str) -> None:
        self.root = Path(run_dir) / ADAPTERS_DIR
        self.base_model_name = base_model_name
        self.root.mkdir(parents=True, exist_ok=True)
        remove_leftovers(self.root)

    def path(self, step: int) -> Path:
        return self.root / step_dir_name(step)

    def save(self, model: Any, step: int) -> SavedAdapter:
        """Write ``adapters/step-<step>`` atomically; an existing one (re-run after resume) is replaced."""
        start = time.perf_counter()
        final = self.path(step)
        replaced = final.exists()
        with staged_dir(final) as staging:
            save_peft_adapter(model, staging, self.base_model_name)
        seconds = time.perf_counter() - start
        log.info("saved adapter %s in %.3f s", final, seconds)
        return SavedAdapter(step=step, path=final, seconds=seconds, replaced=replaced)

    def steps(self) -> list[int]:
        """Steps with a complete adapter directory, oldest first."""
        found: list[int] = []
        for entry in self.root.iterdir():
            match = _STEP_DIR.match(entry.name)
            if match and entry.is_dir() and all((entry / name).is_file() for name in _ADAPTER_FILES):
                found.append(int(match.group(1)))
        return sorted(found)

    def set_best(self, step: int, score: float) -> ScoredAdapter:
        """Point ``best.json`` at ``step`` (its directory must exist)."""
        path = self.path(step)
        if not path.is_dir():
            raise FileNotFoundError(f"no adapter directory for step {step}: {path}")
        doc = {"step": step, "score": score, "path": step_dir_name(step)}
        write_text_atomic(self.root / BEST_POINTER, json.dumps(doc, indent=2) + "\n")
        log.info("best adapter: step %d (score %.4f)", step, score)
        return ScoredAdapter(step=step, score=score, path=path)

    def clear_best(self) -> None:
        """No adapter is the best (the base model scored best, as far as the checkpoint knows)."""
        (self.root / BEST_POINTER).unlink(missing_ok=True)

    def best(self) -> ScoredAdapter | None:
        pointer = self.root / BEST_POINTER
        if not pointer.is_file():
            return None
        return self._adapter(json.loads(pointer.read_text(encoding="utf-8")))

    def _adapter(self, doc: dict[str, Any]) -> ScoredAdapter:
        return ScoredAdapter(step=int(doc["step"]), score=float(doc["score"]), path=self.root / doc["path"])

    def keep_improvement(self, step: int, score: float) -> list[ScoredAdapter]:
        """Add ``step`` (its directory must exist) to the adapters kept for good; returns them all.

        A step recorded before (a step redone after a resume) is replaced, so the list
        stays one entry per step, oldest first.
        """
        if not self.path(step).is_dir():
            raise FileNotFoundError(f"no adapter directory for step {step}: {self.path(step)}")
        kept = [a for a in self.improvements() if a.step != step] + [ScoredAdapter(step, score, self.path(step))]
        kept.sort(key=lambda a: a.step)
        doc = [{"step": a.step, "score": a.score, "path": step_dir_name(a.step)} for a in kept]
        write_text_atomic(self.root / IMPROVEMENTS_FILE, json.dumps(doc, indent=2) + "\n")
        log.info("adapter of step %d kept as an improvement (score %.4f)", step, score)
        return kept

    def improvements(self) -> list[ScoredAdapter]:
        """The adapters kept by :meth:`keep_improvement`, oldest first."""
        path = self.root / IMPROVEMENTS_FILE
        if not path.is_file():
            return []
        return [self._adapter(doc) for doc in json.loads(path.read_text(encoding="utf-8"))]

    def prune(self, keep_last: int, protect: Iterable[int] = ()) -> list[int]:
        """Delete step directories except the newest ``keep_last``, the best, the improvements and ``protect``.

        ``protect`` should hold every version vLLM still has registered: vLLM re-reads
        an adapter from disk when it was evicted from its CPU cache.
        """
        if keep_last < 1:
            raise ValueError("keep_last must be >= 1")
        steps = self.steps()
        keep = set(steps[-keep_last:]) | set(protect)
        best = self.best()
        if best is not None:
            keep.add(best.step)
        keep.update(a.step for a in self.improvements())
        removed = [s for s in steps if s not in keep]
        for step in removed:
            shutil.rmtree(self.path(step), ignore_errors=True)
        if removed:
            log.info("pruned adapters %s", removed)
        return removed


class VLLMUnavailableError(RuntimeError):
    """vLLM did not answer within the configured wait timeout."""


class AdapterLoadError(RuntimeError):
    """vLLM answered but refused the adapter (a configuration problem, not worth waiting for)."""


class VLLMKeyError(RuntimeError):
    """vLLM refused the key this process sent (or that it sent none): waiting does not cure it."""


class _Transient(Exception):
    """A failure that waiting may cure: connection refused/reset, timeout, 5xx of a proxy or a starting server."""


@dataclass(frozen=True)
class PublishResult:
    name: str
    step: int
    already_loaded: bool
    waited_seconds: float
    load_seconds: float
    first_request_seconds: float
    unloaded: list[str]
    foreign: str | None = None  # the path vLLM served ``name`` from instead of the run's (replaced)


class VLLMAdapterSync:
    """Loads each new adapter into a running vLLM and keeps its registry small.

    ``adapter_dir`` is the run's ``adapters/`` directory as the vLLM process sees it
    (another mount point in the inference pod). Versions kept loaded, in priority
    order, capped at ``max_loras``: the current one, the previous one (rollouts may
    still run on it when they overlap training) and the best one.
    """

    def __init__(
        self,
        base_url: str,
        adapter_dir: str,
        max_loras: int = 4,
        *,
        api_key: str | None = None,
        keep_previous: bool = True,
        wait_timeout_seconds: float = 1800.0,
        request_timeout_seconds: float = 60.0,
        verify_prompt: str = "Hello",
        max_backoff_seconds: float = 15.0,
        sleep: Callable[[float], None] = time.sleep,
        prefix: str = "",
    ) -> None:
        if max_loras < 1:
            raise ValueError("max_loras must be >= 1")
        self.base_url = base_url.rstrip("/")
        self.server_url = self.base_url[: -len("/v1")] if self.base_url.endswith("/v1") else self.base_url
        self.adapter_dir = adapter_dir.rstrip("/")
        self.max_loras = max_loras
        self.keep_previous = keep_previous
        self.wait_timeout_seconds = wait_timeout_seconds
        self.verify_prompt = verify_prompt
        self.max_backoff_seconds = max_backoff_seconds
        self._sleep = sleep
        self.prefix = prefix  # the job's adapter names start with it (VLLMEndpoint.adapter_prefix)
        # every request carries the server's key (vLLM refuses /v1 without it, its guard every other path)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(timeout=request_timeout_seconds, headers=headers)
        self.current: int | None = None
        self.previous: int | None = None
        self.best: int | None = None
        self._slept = 0.0  # seconds spent waiting for vLLM during the current operation
        self._loaded: set[int] = set()  # steps of the run's versions vLLM lists (its last listing, our changes since)

    @classmethod
    def from_endpoint(cls, endpoint: VLLMEndpoint, *, keep_previous: bool = True) -> VLLMAdapterSync:
        """The sync for the trainer config's ``vllm`` section."""
        return cls(
            endpoint.base_url,
            endpoint.adapter_dir,
            endpoint.max_loras,
            api_key=endpoint.api_key(),
            keep_previous=keep_previous,
            wait_timeout_seconds=endpoint.wait_timeout_seconds,
            request_timeout_seconds=endpoint.request_timeout_seconds,
            prefix=endpoint.adapter_prefix,
        )

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> VLLMAdapterSync:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- public operations -------------------------------------------------

    def version_name(self, step: int) -> str:
        """The name this job serves the adapter of ``step`` under."""
        return version_name(step, self.prefix)

    def lora_path(self, step: int) -> str:
        return f"{self.adapter_dir}/{step_dir_name(step)}"

    def serve_named(self, name: str, run_relative: str, timeout: float = 120.0) -> None:
        """Serve the adapter at ``run_relative`` (a folder of the run directory, as vLLM sees it) as
        ``name``, replacing one of that name, and check it answers. Not a policy version: never
        unloaded by :meth:`publish`. Waits at most ``timeout`` for an unavailable vLLM (a finished
        run should not hang on it)."""
        path = f"{self.adapter_dir.rsplit('/', 1)[0]}/{run_relative}"

        def once() -> None:
            root = self._served().get(name)
            if root is not None and root != path:  # another adapter under the name: a new adapter id, not in place
                self._unload(name)
                root = None
            self._load(name, path, inplace=root is not None)
            if self._served().get(name) != path:
                raise AdapterLoadError(f"vLLM accepted {name} but does not list it from {path} in /v1/models")
            self._complete(name)

        self._retrying(once, f"serve {name}", timeout)
        log.info("serving %s from %s", name, path)

    @property
    def loaded(self) -> list[str]:
        """The run's versions vLLM serves, oldest first, as of its last listing and this sync's loads and unloads
        since (another job's names, on a pool, are not the run's)."""
        return [self.version_name(step) for step in sorted(self._loaded)]

    def set_best(self, step: int | None) -> None:
        """The best version stays loaded (within ``max_loras``) until another becomes best."""
        self.best = step

    def wanted(self) -> list[int]:
        """Steps that should stay loaded, by priority, at most ``max_loras``."""
        order: list[int] = []
        candidates = [self.current, self.previous if self.keep_previous else None, self.best]
        for step in candidates:
            if step is not None and step not in order:
                order.append(step)
        return order[: self.max_loras]

    def release(self, timeout: float = 120.0) -> list[str]:
        """Unload every version of the run that vLLM serves (best included), returning their names: a finished
        job gives a shared server's slots back. Other jobs' adapters and names that are not versions (the
        result, served under the job's name) stay. Waits at most ``timeout`` for an unavailable vLLM."""
        self.current = self.previous = self.best = None
        unloaded = self._retrying(self._unload_unwanted, "unload the run's versions", timeout)
        return sorted(unloaded, key=lambda name: version_step(name, self.prefix) or 0)

    def wait_ready(self) -> float:
        """Block until ``GET /v1/models`` answers; returns the seconds waited."""
        start = time.monotonic()
        self._retrying(self._served, "list models")
        return time.monotonic() - start

    def served(self) -> dict[str, str]:
        """Model name -> root (path for adapters) of everything vLLM serves now (waits if unavailable)."""
        return self._retrying(self._served, "list models")

    def publish(self, step: int, *, reload: bool = False) -> PublishResult:
        """Make ``policy-v<step>`` the current version: load, verify it answers, unload unwanted ones.

        Idempotent: a version vLLM already lists from the same path is not loaded
        again (resume after a trainer restart) unless ``reload`` (its directory was
        overwritten, see ``SavedAdapter.replaced``).
        """
        self._slept = 0.0
        result = self._retrying(lambda: self._publish_once(step, reload), f"publish {self.version_name(step)}")
        if self.current != step:
            self.previous, self.current = self.current, step
        unloaded = self._retrying(self._unload_unwanted, "unload stale adapters")
        return replace(result, waited_seconds=self._slept, unloaded=unloaded)

    def ensure_current(self) -> list[PublishResult]:
        """Serve again each wanted version vLLM does not serve from the run's path: one a restarted vLLM
        lost, or one served from another path (a foreign adapter loaded under the run's name, or a stale
        server: unloaded, then the run's loaded anew; ``foreign`` says from where). Call before sampling
        and after; [] when vLLM serves exactly what it should."""
        self._slept = 0.0
        served = self.served()
        results: list[PublishResult] = []
        for step in self.wanted():
            name, path = self.version_name(step), self.lora_path(step)
            root = served.get(name)
            if root == path:
                continue
            if root is None:
                log.warning("vLLM no longer serves %s (restarted?); loading it again", name)
            else:
                log.warning("vLLM serves %s from %s, not the run's %s; replacing it", name, root, path)
            result = self._retrying(lambda s=step: self._publish_once(s, False), f"republish {name}")
            results.append(replace(result, waited_seconds=self._slept))
        return results

    # -- one attempt of each operation ----------------------------------------

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        url = f"{self.server_url}{path}"
        try:
            response = self._client.request(method, url, **kwargs)
        except httpx.TransportError as exc:
            raise _Transient(f"{method} {url}: {type(exc).__name__}: {exc}") from exc
        if response.status_code in (502, 503, 504):
            raise _Transient(f"{method} {url}: HTTP {response.status_code}")
        if response.status_code == 401:
            sent = "a key that is not the server's" if "authorization" in self._client.headers else "no key"
            raise VLLMKeyError(f"{method} {url}: HTTP 401: vLLM wants its key (${VLLM_API_KEY_ENV}); we sent {sent}")
        return response

    def _served(self) -> dict[str, str]:
        response = self._request("GET", "/v1/models")
        if response.status_code != 200:
            raise _Transient(f"GET /v1/models: HTTP {response.status_code}: {response.text[:300]}")
        served = {card["id"]: card.get("root") or "" for card in response.json().get("data", [])}
        steps = (version_step(name, self.prefix) for name in served)
        self._loaded = {step for step in steps if step is not None}
        return served

    def _publish_once(self, step: int, reload: bool) -> PublishResult:
        name, path = self.version_name(step), self.lora_path(step)
        root = self._served().get(name)
        already = root == path and not reload
        foreign = root if root is not None and root != path else None
        load_start = time.monotonic()
        if not already:
            if foreign is not None:
                # not in place: a new adapter id, so no prefix-cache block of the other weights is reused
                self._unload(name)
                root = None
            elif root is not None:
                log.warning("reloading %s in place from %s", name, path)
            self._load(name, path, inplace=root is not None)
            root = self._served().get(name)
            if root != path:
                listed = f"from {root}" if root is not None else "not at all"
                raise AdapterLoadError(f"vLLM accepted {name} from {path} but lists it {listed} in /v1/models")
        load_seconds = time.monotonic() - load_start
        request_start = time.monotonic()
        self._complete(name)
        first_request_seconds = time.monotonic() - request_start
        log.info(
            "%s %s (load %.3f s, first request %.3f s)",
            "verified already loaded" if already else "published",
            name,
            load_seconds,
            first_request_seconds,
        )
        return PublishResult(name, step, already, 0.0, load_seconds, first_request_seconds, [], foreign)

    def _load(self, name: str, path: str, inplace: bool) -> None:
        body = {"lora_name": name, "lora_path": path, "load_inplace": inplace}
        response = self._request("POST", "/v1/load_lora_adapter", json=body)
        text = response.text
        if response.status_code == 200 or (response.status_code == 400 and "already been loaded" in text):
            # 400: a concurrent or earlier attempt won; the registry has it
            self._note_loaded(name, True)
            return
        if response.status_code == 404 and "lora" not in text.lower():
            raise AdapterLoadError(
                "vLLM has no runtime LoRA API (POST /v1/load_lora_adapter: 404); start it with "
                "--enable-lora and env VLLM_ALLOW_RUNTIME_LORA_UPDATING=True"
            )
        raise AdapterLoadError(f"vLLM refused adapter {name} from {path}: HTTP {response.status_code}: {text[:500]}")

    def _complete(self, name: str) -> None:
        body = {"model": name, "prompt": self.verify_prompt, "max_tokens": 1, "temperature": 0.0}
        response = self._request("POST", "/v1/completions", json=body)
        if response.status_code != 200:
            raise AdapterLoadError(
                f"vLLM lists {name} but a completion with it failed: HTTP {response.status_code}: {response.text[:500]}"
            )
        if not response.json().get("choices"):
            raise AdapterLoadError(f"vLLM returned no choices for a completion with {name}")

    def _unload(self, name: str) -> None:
        response = self._request("POST", "/v1/unload_lora_adapter", json={"lora_name": name})
        if response.status_code not in (200, 404):  # 404: gone already
            raise AdapterLoadError(f"vLLM refused to unload {name}: HTTP {response.status_code}: {response.text[:300]}")
        self._note_loaded(name, False)

    def _note_loaded(self, name: str, loaded: bool) -> None:
        step = version_step(name, self.prefix)
        if step is not None and loaded:
            self._loaded.add(step)
        elif step is not None:
            self._loaded.discard(step)

    def _unload_unwanted(self) -> list[str]:
        wanted = {self.version_name(step) for step in self.wanted()}
        unloaded: list[str] = []
        for name in self._served():
            if version_step(name, self.prefix) is None or name in wanted:  # not ours (a pool's other jobs), or kept
                continue
            self._unload(name)
            unloaded.append(name)
        if unloaded:
            log.info("unloaded %s", unloaded)
        return unloaded

    # -- waiting -----------------------------------------------------------------

    def _retrying(self, attempt: Callable[[], T], what: str, timeout: float | None = None) -> T:
        """``attempt()`` until it does not raise _Transient, for ``timeout`` (default: the wait timeout)."""
        wait = self.wait_timeout_seconds if timeout is None else timeout
        deadline = time.monotonic() + wait
        delay = 0.5
        while True:
            try:
                return attempt()
            except _Transient as exc:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise VLLMUnavailableError(
                        f"vLLM at {self.server_url} unavailable for {wait:.0f} s "
                        f"(could not {what}); last error: {exc}"
                    ) from exc
                pause = min(delay, remaining, self.max_backoff_seconds)
                log.warning("vLLM unavailable (%s); retrying %s in %.1f s", exc, what, pause)
                self._sleep(pause)
                self._slept += pause
                delay *= 2
