"""The reward service: a Ray Serve application around any RewardModel (which itself knows nothing of Ray).

    handle = deploy(spec, name="reward")                      # Ray must already be initialised
    reply = handle.score.remote(prompts, completions).result()  # -> RewardReply
    POST http://127.0.0.1:8000/reward  {"prompts": [...], "completions": [...]}   (a ScoreBody)
        -> 200 {"rewards": [...], "reward_model_id": ..., "replica": ..., "batch_requests": .., "batch_samples": ..}
        -> 400 (bad request) / 401 (no or wrong bearer token, when one is set) / 413 (body > max_request_bytes)
           / 500 (reward model failed) / 504 (timed out): {"error": reason, "message": ...}
    GET http://127.0.0.1:8000/reward/openapi.json, /reward/docs: the HTTP API's schema and its docs page

Concurrent requests are merged by @serve.batch into one model call. A failure is counted in the
`reward_errors` metric (exported as ray_reward_errors_total{reason=...}) and reported to its own caller
only; the replica keeps serving. This is the only module of reward_service/ that imports Ray.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import ray
from fastapi import Depends, FastAPI
from fastapi.security import HTTPBearer
from ray import serve
from ray.serve.handle import DeploymentHandle
from ray.util import metrics
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse

from reward_service.errors import (
    BadRequestError,
    PayloadTooLargeError,
    RewardModelError,
    RewardServiceError,
    RewardTimeoutError,
    UnauthorizedError,
)
from reward_service.reply import RewardReply
from reward_service.request import ScoreBody, ScoreRequest
from reward_service.reward_model import checked_rewards
from reward_service.spec import RewardSpec, build_reward_model

_LATENCY_BOUNDARIES_S = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]
_BATCH_BOUNDARIES = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096]
HEALTH_CHECK_PERIOD_S = 2.0
# A refused body is still read (and dropped) up to this size: a client such as urllib sends its whole body
# before it reads the answer, and a server closing on unread bytes resets the connection, so it would never
# see the 413. A body larger still is cut off.
DRAIN_LIMIT_BYTES = 256 * 2**20


@dataclass(frozen=True)
class ErrorBody:
    error: str  # the RewardServiceError's reason, e.g. bad_json, too_large, non_finite
    message: str


class RewardAPI(FastAPI):
    """The HTTP app. Its one route reads the body itself (to refuse an oversized one before parsing it), so
    FastAPI does not see the request model: openapi() adds it."""

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"] == scope.get("root_path"):
            # The route prefix itself (POST /reward): the app's "/" rather than a redirect there, which
            # clients do not follow for a POST.
            scope = {**scope, "path": scope["path"] + "/"}
        await super().__call__(scope, receive, send)

    def openapi(self) -> dict:
        if self.openapi_schema is None:
            schema = super().openapi()
            body = ScoreBody.model_json_schema(ref_template="#/components/schemas/{model}")
            schema.setdefault("components", {}).setdefault("schemas", {}).update(body.pop("$defs", {}), ScoreBody=body)
        return self.openapi_schema


app = RewardAPI(title="reward service", summary="Rewards for (prompt, completion) pairs from one reward model.")


@app.exception_handler(HTTPException)
async def _http_error(_: Request, error: HTTPException) -> JSONResponse:
    """FastAPI's own refusals (no such path, a method other than POST) in the service's error body."""
    message = 'POST a JSON body {"prompts": [...], "completions": [...]}' if error.status_code == 405 else error.detail
    reason = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "bad_request")
    return JSONResponse({"error": reason, "message": message}, status_code=error.status_code, headers=error.headers)


async def _drain(http_request: Request, seen: int) -> None:
    """Read the rest of a refused body, up to DRAIN_LIMIT_BYTES, so that the client gets to read the answer."""
    while seen <= DRAIN_LIMIT_BYTES:
        message = await http_request.receive()
        seen += len(message.get("body", b""))
        if message["type"] != "http.request" or not message.get("more_body", False):
            return


def _histogram(name: str, description: str, boundaries: list[float]) -> metrics.Histogram:
    return metrics.Histogram(name, description, boundaries=boundaries, tag_keys=("app", "reward_model"))


# Everything a route uses is defined above: @serve.ingress pickles the routes as the class is made.
@serve.deployment
@serve.ingress(app)
class RewardDeployment:
    """One replica: a RewardModel built from the spec, dynamic batching, metrics, a handle and an HTTP API."""

    def __init__(self, spec: RewardSpec, http_token: str = "") -> None:
        self._spec = spec
        self._http_token = http_token.encode()
        self._model = build_reward_model(spec)
        context = serve.get_replica_context()
        self._replica = context.replica_id.unique_id
        tags = {"app": context.app_name, "reward_model": self._model.model_id}
        self._errors = metrics.Counter(
            "reward_errors", "Scoring requests that failed, by reason.", tag_keys=("app", "reward_model", "reason")
        )
        self._latency = _histogram("reward_request_latency_s", "Seconds from request to reply.", _LATENCY_BOUNDARIES_S)
        self._batch_samples = _histogram("reward_batch_samples", "Samples scored per model call.", _BATCH_BOUNDARIES)
        self._batch_requests = _histogram("reward_batch_requests", "Requests merged per model call.", _BATCH_BOUNDARIES)
        for metric in (self._errors, self._latency, self._batch_samples, self._batch_requests):
            metric.set_default_tags(tags)
        self._score_batch.set_max_batch_size(spec.max_batch_size)
        self._score_batch.set_batch_wait_timeout_s(spec.batch_wait_timeout_s)

    async def score(self, prompts: Sequence[str], completions: Sequence[str]) -> RewardReply:
        """The Python handle API: rewards for (prompts[i], completions[i]); raises a RewardServiceError."""
        return await self._serve(lambda: ScoreRequest.of(prompts, completions))

    async def model_id(self) -> str:
        return self._model.model_id

    @app.post(
        "/",
        response_model=RewardReply,
        responses={status: {"model": ErrorBody} for status in (400, 401, 413, 500, 504)},
        dependencies=[Depends(HTTPBearer(auto_error=False, description="when the service has a token"))],
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ScoreBody"}}},
            }
        },
    )
    async def score_http(self, http_request: Request) -> RewardReply | JSONResponse:
        """Rewards for (prompts[i], completions[i]) from a ScoreBody."""
        try:
            self._check_token(http_request.headers.get("authorization", ""))
            body = await self._read_body(http_request)
            return await self._serve(lambda: ScoreRequest.from_json(body))
        except RewardServiceError as error:
            headers = {}
            if isinstance(error, UnauthorizedError):
                await _drain(http_request, 0)  # the client reads the 401 only once it has sent its body
                headers["WWW-Authenticate"] = "Bearer"
            if isinstance(error, UnauthorizedError | PayloadTooLargeError):
                self._errors.inc(1, tags={"reason": error.reason})  # refused before _serve counts anything
                headers["Connection"] = "close"  # past DRAIN_LIMIT_BYTES the body was cut off mid-way
            return JSONResponse(
                {"error": error.reason, "message": error.message}, status_code=error.http_status, headers=headers
            )

    def _check_token(self, authorization: str) -> None:
        if not self._http_token:
            return
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self._http_token):
            raise UnauthorizedError("send the service's token as 'Authorization: Bearer <token>'")

    async def _read_body(self, http_request: Request) -> bytes:
        """The body, refusing (413) one over max_request_bytes, declared or streamed, without keeping it."""
        limit = self._spec.max_request_bytes
        declared = http_request.headers.get("content-length", "")
        too_large = PayloadTooLargeError(f"the body is larger than max_request_bytes={limit}")
        if declared.isdigit() and int(declared) > limit:
            await _drain(http_request, 0)
            raise too_large
        body, more = bytearray(), True
        while more:
            message = await http_request.receive()
            if message["type"] != "http.request":
                raise BadRequestError("the client closed the connection before its body ended", "incomplete_body")
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > limit:
                if more:
                    await _drain(http_request, len(body))
                raise too_large
        return bytes(body)

    async def _serve(self, parse: Callable[[], ScoreRequest]) -> RewardReply:
        """Validate, score within the timeout, count what failed: every error leaves as a RewardServiceError."""
        start = time.perf_counter()
        try:
            request = parse()
            if request.size == 0:
                return self._reply((), 0, 0)
            outcome = await asyncio.wait_for(self._score_batch(request), self._spec.request_timeout_s)
            if isinstance(outcome, Exception):
                raise outcome
            return outcome
        except TimeoutError:
            error = RewardTimeoutError(
                f"reward model {self._model.model_id!r} did not answer within "
                f"request_timeout_s={self._spec.request_timeout_s}"
            )
        except RewardServiceError as exc:
            error = exc
        except Exception as exc:  # a model bug must not take the replica down: report it as a model error
            error = RewardModelError(f"reward model {self._model.model_id!r} failed: {type(exc).__name__}: {exc}")
        finally:
            self._latency.observe(time.perf_counter() - start)
        self._errors.inc(1, tags={"reason": error.reason})
        raise error

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01)  # both reset from the spec in __init__
    async def _score_batch(self, requests: list[ScoreRequest]) -> list[RewardReply | Exception]:
        """One model call for all merged requests; if it fails, each request is retried alone so that
        only the request that broke the model gets the error (the others' rewards are still good)."""
        prompts = [p for r in requests for p in r.prompts]
        completions = [c for r in requests for c in r.completions]
        self._batch_samples.observe(len(prompts))
        self._batch_requests.observe(len(requests))
        try:
            rewards = await self._run_model(prompts, completions)
        except Exception as exc:
            if len(requests) == 1:
                return [exc]
            return [await self._score_alone(r) for r in requests]
        replies, offset = [], 0
        for r in requests:
            replies.append(self._reply(rewards[offset : offset + r.size], len(requests), len(prompts)))
            offset += r.size
        return replies

    async def _score_alone(self, request: ScoreRequest) -> RewardReply | Exception:
        try:
            rewards = await self._run_model(list(request.prompts), list(request.completions))
        except Exception as exc:
            return exc
        return self._reply(rewards, 1, request.size)

    def _reply(self, rewards: Sequence[float], batch_requests: int, batch_samples: int) -> RewardReply:
        return RewardReply(tuple(rewards), self._model.model_id, self._replica, batch_requests, batch_samples)

    async def _run_model(self, prompts: list[str], completions: list[str]) -> list[float]:
        # In a worker thread: a long forward pass must not stall the replica's event loop, which keeps
        # accepting (and batching) requests, answering health checks and enforcing timeouts meanwhile.
        values = await asyncio.to_thread(self._model.score, prompts, completions)
        return checked_rewards(values, len(prompts), self._model.model_id)


def deployment_options(spec: RewardSpec, env_vars: Mapping[str, str] | None = None) -> dict:
    """Serve deployment options from the spec: resources per replica, replica count or autoscaling bounds;
    `env_vars` are set in every replica's process (e.g. its thread count, cluster/runtime/threads.py)."""
    actor_options: dict = {"num_cpus": spec.cpus_per_replica, "num_gpus": spec.gpus_per_replica}
    if env_vars:
        actor_options["runtime_env"] = {"env_vars": dict(env_vars)}
    options = {
        "ray_actor_options": actor_options,
        # Enough requests in flight per replica to fill one batch while the previous one is scored;
        # Serve's default (5) would cap every batch at 5 requests.
        "max_ongoing_requests": 2 * spec.max_batch_size,
        # A dead replica is noticed at its next health check and replaced; Serve's default period is 10 s.
        "health_check_period_s": HEALTH_CHECK_PERIOD_S,
    }
    if spec.autoscaling:
        options["autoscaling_config"] = {
            "min_replicas": spec.min_replicas,
            "max_replicas": spec.max_replicas,
            "initial_replicas": spec.replicas,
            "target_ongoing_requests": spec.target_ongoing_requests,
        }
    else:
        options["num_replicas"] = spec.replicas
    return options


def deploy(spec: RewardSpec, *, name: str = "reward", env_vars: Mapping[str, str] | None = None) -> DeploymentHandle:
    """Start (or update) the Serve application `name` for `spec`; returns its handle once replicas are up.

    Ray must already be initialised (cluster/ owns ray.init). The first deploy starts Serve's HTTP proxy
    on spec.http_host:spec.http_port; a later spec asking for another host or port is an error, because
    Serve has one proxy per cluster and would otherwise silently ignore it.
    """
    return deploy_many({name: spec}, env_vars=env_vars)[name]


def deploy_many(
    specs: Mapping[str, RewardSpec], env_vars: Mapping[str, str] | None = None
) -> dict[str, DeploymentHandle]:
    """deploy() for several applications (name -> spec) at once: their replicas start side by side."""
    if not ray.is_initialized():
        raise RuntimeError("reward_service.deploy: Ray is not initialised; call ray.init() (cluster/ does) first")
    routes = [spec.route_prefix for spec in specs.values()]
    if len(set(routes)) != len(routes):
        raise ValueError(f"reward_service.deploy: applications need distinct route_prefix values, got {routes}")
    for spec in specs.values():
        serve.start(http_options={"host": spec.http_host, "port": spec.http_port})
        _check_http_proxy(spec)
    # The token is resolved here, in the driver (it may come from its environment), and handed to the replicas.
    targets = [
        serve.RunTarget(
            RewardDeployment.options(name="RewardDeployment", **deployment_options(spec, env_vars)).bind(
                spec, spec.resolved_http_token
            ),
            name=name,
            route_prefix=spec.route_prefix,
        )
        for name, spec in specs.items()
    ]
    return dict(zip(specs, serve.run_many(targets), strict=True))


def _check_http_proxy(spec: RewardSpec) -> None:
    from ray.serve.context import _get_global_client  # Serve exposes the running proxy's config only here

    running = _get_global_client().http_config
    if (running.host, running.port) != (spec.http_host, spec.http_port):
        raise RuntimeError(
            f"Serve's HTTP proxy already listens on {running.host}:{running.port}, but the reward "
            f"spec asks for {spec.http_host}:{spec.http_port}; use the same http_host/http_port "
            "for every application in this Ray cluster"
        )


def shutdown(name: str | None = None) -> None:
    """Delete the application `name`, or (name=None) shut all of Serve down, proxy included."""
    if name is None:
        serve.shutdown()
    else:
        serve.delete(name)
