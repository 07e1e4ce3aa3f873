"""The trainer's HTTP endpoint: ``/progress`` (JSON), ``/metrics`` (Prometheus), ``/health``, ``/healthz``.

The operator has no write access to the trainer and reads its state by polling
``/progress``; Prometheus scrapes ``/metrics``. Metrics live in a dedicated
CollectorRegistry (no process-global state, several trainers per test process)
and are driven by the ProgressBoard, so they always agree with the document.
``/health`` is the kubelet's startup and liveness probe (the path vLLM serves too): it
answers without touching the board, so a step holding the board's lock never reads as
a hang. ``/healthz`` adds the phase, for people.
"""

from __future__ import annotations

import json
import logging
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from grpo_trainer.contract.progress import PHASES, Progress
from grpo_trainer.run.progress_board import ProgressBoard

log = logging.getLogger(__name__)

_PHASE_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 3600)


class TrainerMetrics:
    """Prometheus collectors of one run, updated from the progress document (a ProgressObserver)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.step = Gauge("grpo_trainer_step", "Completed optimizer steps.", registry=r)
        self.max_steps = Gauge("grpo_trainer_max_steps", "Steps the run will take.", registry=r)
        self.phase = Gauge("grpo_trainer_phase", "1 for the phase the trainer is in.", ["phase"], registry=r)
        self.reward_mean = Gauge("grpo_trainer_reward_mean", "Mean rollout reward of the last step.", registry=r)
        self.reward_std = Gauge("grpo_trainer_reward_std", "Std of rollout rewards of the last step.", registry=r)
        self.val_score = Gauge("grpo_trainer_val_score", "Latest validation score.", registry=r)
        self.best_val_score = Gauge("grpo_trainer_best_val_score", "Best validation score so far.", registry=r)
        self.adapter_version = Gauge(
            "grpo_trainer_adapter_version", "Step of the adapter vLLM serves to rollouts (policy-vN).", registry=r
        )
        self.eta = Gauge("grpo_trainer_eta_seconds", "Estimated seconds until the last step.", registry=r)
        self.finished = Gauge("grpo_trainer_finished", "1 once the run ended (done or failed).", registry=r)
        self.phase_seconds = Histogram(
            "grpo_trainer_phase_seconds",
            "Duration of each run of a phase.",
            ["phase"],
            buckets=_PHASE_BUCKETS,
            registry=r,
        )
        self.tokens_generated = Counter("grpo_trainer_tokens_generated", "Completion tokens sampled.", registry=r)
        self.tokens_trained = Counter("grpo_trainer_tokens_trained", "Completion tokens in the loss.", registry=r)
        self.rollout_failures = Counter(
            "grpo_trainer_rollout_failures", "Failed rollouts by kind.", ["kind"], registry=r
        )
        # the last step's diagnostics (StepDiagnostics)
        self.loss = Gauge("grpo_trainer_loss", "Loss of the last step's update.", registry=r)
        self.grad_norm = Gauge("grpo_trainer_grad_norm", "Gradient norm before clipping, last step.", registry=r)
        self.learning_rate = Gauge(
            "grpo_trainer_learning_rate", "Learning rate of the last optimizer step.", registry=r
        )
        self.clip_fraction = Gauge(
            "grpo_trainer_clip_fraction", "Share of trained tokens clipped, last step.", ["side"], registry=r
        )
        self.kl = Gauge("grpo_trainer_kl_mean", "Mean per-token KL to the reference, last step.", registry=r)
        self.importance_weight = Gauge(
            "grpo_trainer_importance_weight_mean", "Mean trainer/sampler importance weight, last step.", registry=r
        )
        self.zero_variance_share = Gauge(
            "grpo_trainer_zero_variance_group_share", "Share of the last step's groups with equal rewards.", registry=r
        )
        self.completion_length = Gauge(
            "grpo_trainer_completion_length_tokens",
            "Completion length of the last step's rollouts.",
            ["stat"],
            registry=r,
        )
        self.skipped_groups = Counter(
            "grpo_trainer_skipped_groups", "Groups with zero reward variance, skipped (no gradient).", registry=r
        )
        # run totals already counted: counters only go up, the document holds totals
        self._seen_generated = 0
        self._seen_trained = 0
        self._seen_skipped = 0
        self._seen_failures: dict[str, int] = {}
        self._lock = threading.Lock()

    def on_progress(self, progress: Progress) -> None:
        with self._lock:
            self.step.set(progress.step)
            self.max_steps.set(progress.max_steps)
            for phase in PHASES:
                self.phase.labels(phase=phase).set(1 if phase == progress.phase else 0)
            _set_optional(self.reward_mean, progress.reward_mean)
            _set_optional(self.reward_std, progress.reward_std)
            _set_optional(self.val_score, progress.val_score)
            _set_optional(self.best_val_score, progress.best_val_score)
            _set_optional(self.adapter_version, progress.adapter_step)
            _set_optional(self.eta, progress.eta_seconds)
            self.finished.set(1 if progress.finished else 0)
            d = progress.diagnostics
            if d is not None:
                self.loss.set(d.loss)
                self.grad_norm.set(d.grad_norm)
                self.learning_rate.set(d.learning_rate)
                for side, value in (
                    ("low", d.clip_fraction_low),
                    ("high", d.clip_fraction_high),
                    ("total", d.clip_fraction),
                ):
                    self.clip_fraction.labels(side=side).set(value)
                self.kl.set(d.mean_kl)
                self.importance_weight.set(d.mean_importance_weight)
                self.zero_variance_share.set(d.zero_variance_group_share)
                self.completion_length.labels(stat="mean").set(d.completion_length_mean)
                self.completion_length.labels(stat="max").set(d.completion_length_max)
            self._seen_generated = _advance(self.tokens_generated, self._seen_generated, progress.tokens_generated)
            self._seen_trained = _advance(self.tokens_trained, self._seen_trained, progress.tokens_trained)
            self._seen_skipped = _advance(self.skipped_groups, self._seen_skipped, progress.skipped_groups)
            for kind, total in progress.rollout_failures.items():
                seen = self._seen_failures.get(kind, 0)
                self._seen_failures[kind] = _advance(self.rollout_failures.labels(kind=kind), seen, total)

    def on_phase_seconds(self, phase: str, seconds: float) -> None:
        self.phase_seconds.labels(phase=phase).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _set_optional(gauge: Gauge, value: float | None) -> None:
    gauge.set(float("nan") if value is None else value)


def _advance(counter: Counter, seen: int, total: int) -> int:
    if total > seen:
        counter.inc(total - seen)
        return total
    return seen


class ProgressServer:
    """A ThreadingHTTPServer in a daemon thread. Port 0 binds a free port (see ``port``)."""

    def __init__(
        self, board: ProgressBoard, port: int, host: str = "0.0.0.0", metrics: TrainerMetrics | None = None
    ) -> None:
        self.board = board
        self.metrics = metrics if metrics is not None else TrainerMetrics()
        board.subscribe(self.metrics)
        self._httpd = ThreadingHTTPServer((host, port), _handler(board, self.metrics))
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def host(self) -> str:
        return str(self._httpd.server_address[0])

    def start(self) -> ProgressServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="progress-server", daemon=True)
        self._thread.start()
        log.info("serving /progress, /metrics, /health and /healthz on port %d", self.port)
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> ProgressServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _handler(board: ProgressBoard, metrics: TrainerMetrics) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            route = self.path.split("?", 1)[0].rstrip("/") or "/"
            if route == "/progress":
                self._send(HTTPStatus.OK, "application/json", board.snapshot().model_dump_json().encode())
            elif route == "/metrics":
                self._send(HTTPStatus.OK, CONTENT_TYPE_LATEST, metrics.render())
            elif route == "/health":
                self._send(HTTPStatus.OK, "text/plain", b"ok\n")
            elif route == "/healthz":
                body = json.dumps({"status": "ok", "phase": board.snapshot().phase}).encode()
                self._send(HTTPStatus.OK, "application/json", body)
            else:
                self._send(
                    HTTPStatus.NOT_FOUND, "text/plain", b"not found: try /progress, /metrics, /health or /healthz\n"
                )

        def _send(self, status: HTTPStatus, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (http.server's signature)
            log.debug("%s " + format, self.address_string(), *args)

    return Handler
