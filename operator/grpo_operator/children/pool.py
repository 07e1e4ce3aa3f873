"""An inference pool's children: its vLLM pods (one per replica), the Service in front of them, its key
Secret, its volume, its ConfigMap (the key guard) and its NetworkPolicy.

The server is the pool's resolution (grpo_operator.resolve.resolve_pool), rendered by the same container
builder as a job's own vLLM pod; it mounts the pool's whole claim, in which each attached job's run
directory (runs/<job>) holds the adapters the job asks it to load, and the result (runs/<job>/result/adapter)
it serves once the job has succeeded with spec.serve.enabled.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

from grpo_operator.children.config import pool_config_map, resolved_pool, service_host
from grpo_operator.children.credentials import api_key_ref, api_key_secret
from grpo_operator.children.inference import guard_mount, inference_service, vllm_container
from grpo_operator.children.meta import INFERENCE, Pool, pool_pod_name
from grpo_operator.children.network import pool_network_policy, serve_network_policy
from grpo_operator.children.podspec import model_mounts, pod, run_mount, scratch_mounts
from grpo_operator.children.volume import persistent_volume_claim
from grpo_operator.settings import OperatorSettings
from grpo_trainer.contract.vllm_command import GUARD_FILE
from grpo_trainer.contract.vllm_guard import SERVED_RESULTS_FILE


def pool_pod(pool: Pool, settings: OperatorSettings, replica: int) -> dict[str, Any]:
    """The vLLM pod of one replica of the pool."""
    run = resolved_pool(pool, settings)
    container = vllm_container(run.server, run.plan, pool.spec.server, run.env_refs, settings)
    # the guard's folder also has the list of the results the pool serves, kept current by the kubelet
    guard = guard_mount(pool, run.server.guard_dir, (GUARD_FILE, SERVED_RESULTS_FILE))
    mounts = [run_mount(pool, None), *model_mounts(pool), guard, *scratch_mounts(run.plan)]
    return pod(
        pool,
        name=pool_pod_name(pool, replica),
        component=INFERENCE,
        attempt=replica,
        options=pool.spec.server,
        plan=run.plan,
        container=container,
        mounts=mounts,
        restart_policy="Always",  # a crash is restarted in place by the kubelet; a lost pod by the operator
        termination_grace_seconds=30,
        affinity=None,  # one replica: nothing to place it beside
        pod_group=False,
    )


def pool_children(
    pool: Pool, settings: OperatorSettings, api_key: Optional[str], served: Sequence[str] = ()
) -> list[dict[str, Any]]:
    """What the pool needs before its pods, in creation order: volume, ConfigMap (with the results it serves:
    ``served``, the succeeded jobs'), key (``api_key``: None when it exists), NetworkPolicies (serving a
    result, the pods of its namespace, the result's clients, are admitted too), Service."""
    out: list[dict[str, Any]] = []
    claim = persistent_volume_claim(pool)
    if claim is not None:
        # not owned by the pool: deleting the pool must not delete the runs and checkpoints of its jobs
        del claim["metadata"]["ownerReferences"]
        out.append(claim)
    out.append(pool_config_map(pool, served))
    if api_key is not None:
        out.append(api_key_secret(pool, api_key))
    policy = pool_network_policy(pool, settings)
    if policy is not None:
        out.append(policy)
    serve = serve_network_policy(pool, settings) if served else None
    if serve is not None:
        out.append(serve)
    out.append(inference_service(pool, settings))
    return out


def pool_endpoint(pool: Pool, settings: OperatorSettings) -> dict[str, Any]:
    """status.endpoint of a pool: its Service's OpenAI URL and where its key is."""
    url = f"http://{service_host(pool.name, pool.namespace, settings)}:{settings.inference_port}/v1"
    return {"url": url, "apiKeySecretRef": api_key_ref(pool)}
