"""The reward service on a real local Ray + Serve (started once for this module): batching, replicas,
the handle and HTTP APIs, every error path, and the metrics they leave behind."""

import json
import math
import re
import time
import urllib.error
import urllib.request

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cluster.runtime.ports import free_port

ray = pytest.importorskip("ray")

from reward_service.entailment import EntailmentReward  # noqa: E402
from reward_service.errors import BadRequestError, NonFiniteRewardError, RewardModelError  # noqa: E402
from reward_service.learned import LearnedRewardModel  # noqa: E402
from reward_service.reply import RewardReply  # noqa: E402
from reward_service.spec import RewardSpec  # noqa: E402

FUNCTIONS = "tests.component.tiny_reward_functions"
TOKEN = "s3cret-token"
PROMPTS = ["the movie", "the film", "the plot", "i thought the film", "the acting", "the music"]
COMPLETIONS = ["was great .", "was awful .", "great . was", "was really moving .", "seemed quite dull .", "was"]


@pytest.fixture(scope="module")
def cluster(tiny_dir):
    """One local Ray (4 logical CPUs, fast metrics export) and three reward apps sharing one HTTP port."""
    from reward_service import serve_app

    metrics_port, http_port = free_port(), free_port()
    ray.init(
        address="local",
        num_cpus=4,
        include_dashboard=False,
        _metrics_export_port=metrics_port,
        _system_config={"metrics_report_interval_ms": 1000},
    )
    common = {"http_port": http_port, "cpus_per_replica": 0.5}
    specs = {
        "learned": RewardSpec(
            "learned",
            str(tiny_dir / "reward"),
            replicas=2,
            max_batch_size=16,
            batch_wait_timeout_s=0.05,
            route_prefix="/reward-learned",
            **common,
        ),
        "nli": RewardSpec("entailment", str(tiny_dir / "nli"), route_prefix="/reward-nli", **common),
        "fn": RewardSpec(
            "function",
            f"{FUNCTIONS}:misbehaving",
            request_timeout_s=1.0,
            batch_wait_timeout_s=0.05,
            route_prefix="/reward-fn",
            **common,
        ),
        "guarded": RewardSpec(
            "function",
            f"{FUNCTIONS}:misbehaving",
            http_token=TOKEN,
            max_request_bytes=2048,
            route_prefix="/reward-guarded",
            **{**common, "cpus_per_replica": 0.25},
        ),
    }
    try:
        handles = serve_app.deploy_many({f"reward-{name}": spec for name, spec in specs.items()})
        handles = {name: handles[f"reward-{name}"] for name in specs}
        yield {"handles": handles, "specs": specs, "http_port": http_port, "metrics_port": metrics_port}
    finally:
        serve_app.shutdown()
        ray.shutdown()


def test_deploy_needs_ray_and_deployment_options_follow_the_spec():
    from reward_service import serve_app

    if not ray.is_initialized():  # cluster/ owns ray.init; deploy must say so rather than start its own
        with pytest.raises(RuntimeError, match="ray.init"):
            serve_app.deploy(RewardSpec("function", f"{FUNCTIONS}:misbehaving"))
    fixed = serve_app.deployment_options(
        RewardSpec("learned", "p", replicas=3, cpus_per_replica=2.0, gpus_per_replica=0.5, max_batch_size=8)
    )
    assert fixed == {
        "ray_actor_options": {"num_cpus": 2.0, "num_gpus": 0.5},
        "max_ongoing_requests": 16,
        "health_check_period_s": serve_app.HEALTH_CHECK_PERIOD_S,
        "num_replicas": 3,
    }
    scaled = serve_app.deployment_options(RewardSpec("learned", "p", replicas=2, min_replicas=1, max_replicas=4))
    assert "num_replicas" not in scaled
    assert scaled["autoscaling_config"] == {
        "min_replicas": 1,
        "max_replicas": 4,
        "initial_replicas": 2,
        "target_ongoing_requests": 2.0,
    }


def test_a_second_http_port_is_refused(cluster):
    from reward_service import serve_app

    other = RewardSpec("function", f"{FUNCTIONS}:misbehaving", http_port=cluster["http_port"] + 1, route_prefix="/x")
    with pytest.raises(RuntimeError, match="already listens on"):
        serve_app.deploy(other, name="reward-other")


def post(cluster, route: str, body: bytes, token: str | None = None) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {token}"} if token else {})
    request = urllib.request.Request(
        f"http://127.0.0.1:{cluster['http_port']}{route}", data=body, headers=headers, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def score_json(prompts, completions) -> bytes:
    return json.dumps({"prompts": prompts, "completions": completions}).encode()


def test_serve_equals_in_process(cluster, tiny_dir):
    reply = cluster["handles"]["learned"].score.remote(PROMPTS, COMPLETIONS).result(timeout_s=60)
    local = LearnedRewardModel(str(tiny_dir / "reward"))
    assert isinstance(reply, RewardReply)
    assert reply.reward_model_id == local.model_id
    assert list(reply.rewards) == pytest.approx(local.score(PROMPTS, COMPLETIONS), abs=1e-5)


def test_entailment_through_serve(cluster, tiny_dir):
    premise = "the movie was great ."
    hyps = [premise, "the movie was awful .", "the plot was dull ."]
    reply = cluster["handles"]["nli"].score.remote([premise] * 3, hyps).result(timeout_s=60)
    assert all(r <= 0.0 for r in reply.rewards)
    assert list(reply.rewards) == pytest.approx(
        EntailmentReward(str(tiny_dir / "nli")).score([premise] * 3, hyps), abs=1e-5
    )


def test_concurrent_requests_are_batched_across_two_replicas(cluster, tiny_dir):
    handle = cluster["handles"]["learned"]
    pairs = [(PROMPTS[i % len(PROMPTS)], COMPLETIONS[(i * 5) % len(COMPLETIONS)]) for i in range(96)]
    responses = [handle.score.remote([p], [c]) for p, c in pairs]
    replies = [r.result(timeout_s=60) for r in responses]
    assert max(r.batch_requests for r in replies) > 1  # dynamic batching merged concurrent requests
    assert max(r.batch_requests for r in replies) <= cluster["specs"]["learned"].max_batch_size
    assert len({r.replica for r in replies}) == 2  # both replicas took traffic
    # Batching does not change any sample's reward.
    local = LearnedRewardModel(str(tiny_dir / "reward"))
    expected = local.score([p for p, _ in pairs], [c for _, c in pairs])
    assert [r.rewards[0] for r in replies] == pytest.approx(expected, abs=1e-5)


def test_http_scoring_and_the_tiny_task(cluster):
    status, body = post(
        cluster, "/reward-learned", score_json(["the movie"] * 3, ["was great .", "was awful .", "great . was"])
    )
    assert status == 200, body
    good, bad, shuffled = body["rewards"]
    assert good > bad > shuffled  # positive well-formed > negative > shuffled
    assert body["reward_model_id"].startswith("learned:") and body["batch_samples"] >= 3


def _slug(text: str) -> str:
    return re.sub(r"\W+", "-", text.lower()).strip("-")


def _bad(body: bytes, reason: str, what: str):
    return pytest.param(body, reason, marks=pytest.mark.bad_input(what, f"HTTP 400 `{reason}`"), id=_slug(what))


@pytest.mark.parametrize(
    "body, reason",
    [
        _bad(b"{not json", "bad_json", "HTTP body that is not JSON"),
        _bad(b"", "bad_json", "HTTP body that is empty"),
        _bad(b'{"prompts": ["caf\xe9"], "completions": ["x"]}', "bad_json", "HTTP body that is not UTF-8"),
        _bad(b'{"prompts": ["a"]}', "missing_field", "HTTP body without `completions`"),
        _bad(
            b'{"prompts": ["a", "b"], "completions": ["c"]}',
            "length_mismatch",
            "HTTP body with 2 prompts, 1 completion",
        ),
        _bad(b'{"prompts": [1], "completions": ["c"]}', "wrong_type", "HTTP body with a number for a prompt"),
        _bad(b'{"prompts": "a", "completions": "c"}', "wrong_type", "HTTP body with strings for the lists"),
        _bad(b'[["a", "c"]]', "wrong_type", "HTTP body that is a JSON list, not an object"),
        _bad(
            b'{"prompts": ["\\ud800"], "completions": ["c"]}', "bad_unicode", "HTTP body with a lone UTF-16 surrogate"
        ),
    ],
)
def test_http_bad_requests_get_400_and_the_service_keeps_serving(cluster, body, reason):
    status, reply = post(cluster, "/reward-fn", body)
    assert status == 400 and reply["error"] == reason and reply["message"], reply
    assert post(cluster, "/reward-fn", score_json(["ab"], ["c"])) == (
        200,
        {
            "rewards": [3.0],
            "reward_model_id": cluster["handles"]["fn"].model_id.remote().result(timeout_s=30),
            "replica": cluster["handles"]["fn"].score.remote(["a"], ["b"]).result(timeout_s=30).replica,
            "batch_requests": 1,
            "batch_samples": 1,
        },
    )


def test_http_get_is_refused_with_a_hint(cluster):
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(f"http://127.0.0.1:{cluster['http_port']}/reward-fn", timeout=30)
    assert info.value.code == 405 and "POST" in json.loads(info.value.read())["message"]


def _fails(completion: str, status: int, reason: str, what: str):
    return pytest.param(
        completion, status, reason, marks=pytest.mark.bad_input(what, f"HTTP {status} `{reason}`"), id=_slug(what)
    )


@pytest.mark.parametrize(
    "completion, status, reason",
    [
        _fails("NAN", 500, "non_finite", "reward model returns NaN"),
        _fails("INF", 500, "non_finite", "reward model returns inf"),
        _fails("RAISE", 500, "model_error", "reward model raises"),
        _fails("SLOW 2.5", 504, "timeout", "reward model slower than request_timeout_s"),
    ],
)
def test_http_model_failures_get_5xx_and_the_service_keeps_serving(cluster, completion, status, reason):
    got, reply = post(cluster, "/reward-fn", score_json(["p", "q"], ["fine", completion]))
    assert got == status and reply["error"] == reason, reply
    assert "misbehaving" in reply["message"]
    if reason != "timeout":
        assert "sample 1" in reply["message"]
    time.sleep(2.0 if reason == "timeout" else 0.0)  # let the slow call finish before the next test
    assert post(cluster, "/reward-fn", score_json(["ab"], ["c"]))[1]["rewards"] == [3.0]


def test_handle_errors_are_typed(cluster):
    handle = cluster["handles"]["fn"]
    with pytest.raises(NonFiniteRewardError, match="sample 0"):
        handle.score.remote(["p"], ["NAN"]).result(timeout_s=30)
    with pytest.raises(RewardModelError, match="asked to fail"):
        handle.score.remote(["p"], ["RAISE"]).result(timeout_s=30)
    with pytest.raises(BadRequestError, match="2 prompts but 1 completions"):
        handle.score.remote(["p", "q"], ["c"]).result(timeout_s=30)
    assert handle.score.remote([], []).result(timeout_s=30).rewards == ()


def test_one_bad_request_does_not_fail_its_batch_mates(cluster):
    handle = cluster["handles"]["fn"]
    completions = ["ok"] * 7 + ["NAN"] + ["ok"] * 7
    responses = [handle.score.remote(["p"], [c]) for c in completions]
    failed = 0
    for response, completion in zip(responses, completions, strict=True):
        if completion == "NAN":
            with pytest.raises(NonFiniteRewardError):
                response.result(timeout_s=30)
            failed += 1
        else:
            assert response.result(timeout_s=30).rewards == (3.0,)
    assert failed == 1


def test_errors_latency_and_batch_size_are_exported_as_metrics(cluster):
    post(cluster, "/reward-fn", b"{not json")  # at least one error of each kind we look for
    post(cluster, "/reward-fn", score_json(["p"], ["NAN"]))
    wanted = [
        "ray_reward_errors_total{",
        'reason="bad_json"',
        'reason="non_finite"',
        "ray_reward_request_latency_s_bucket",
        "ray_reward_batch_samples_bucket",
    ]
    text = ""
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"http://127.0.0.1:{cluster['metrics_port']}/metrics", timeout=10) as response:
            text = response.read().decode()
        if all(w in text for w in wanted):
            break
        time.sleep(1.0)
    missing = [w for w in wanted if w not in text]
    assert not missing, f"metrics missing {missing}"
    errors = [line for line in text.splitlines() if line.startswith("ray_reward_errors_total{")]
    assert any('reason="non_finite"' in line and float(line.rsplit(" ", 1)[1]) >= 1 for line in errors)
    assert all(math.isfinite(float(line.rsplit(" ", 1)[1])) for line in errors)


@pytest.mark.bad_input("HTTP body over reward.max_request_bytes (declared or chunked)", "HTTP 413 `too_large`")
def test_oversized_bodies_get_413_and_the_service_keeps_serving(cluster):
    big = score_json(["x" * 3000], ["y"])
    assert post(cluster, "/reward-guarded", big, TOKEN) == (
        413,
        {"error": "too_large", "message": "the body is larger than max_request_bytes=2048"},
    )
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", cluster["http_port"], timeout=30)
    chunks = iter([b'{"prompts": ["', b"x" * 1500, b"x" * 1500, b'"], "completions": ["y"]}'])
    conn.request(
        "POST",
        "/reward-guarded",
        body=chunks,
        encode_chunked=True,
        headers={"Authorization": f"Bearer {TOKEN}", "Transfer-Encoding": "chunked"},
    )
    response = conn.getresponse()
    assert response.status == 413 and json.loads(response.read())["error"] == "too_large"
    conn.close()
    assert post(cluster, "/reward-guarded", score_json(["ab"], ["c"]), TOKEN)[1]["rewards"] == [3.0]


@pytest.mark.bad_input("HTTP request without / with a wrong bearer token (token set)", "HTTP 401 `unauthorized`")
def test_token_is_required_when_set(cluster):
    body = score_json(["ab"], ["c"])
    for token in (None, "wrong", TOKEN + "x"):
        status, reply = post(cluster, "/reward-guarded", body, token)
        assert status == 401 and reply["error"] == "unauthorized", reply
    assert post(cluster, "/reward-guarded", body, TOKEN)[1]["rewards"] == [3.0]
    assert post(cluster, "/reward-fn", body)[0] == 200  # an application without a token needs none


@pytest.mark.bad_input(
    "prompts and completions in any script (accents, CJK, RTL, emoji)", "HTTP 200, scored like in-process"
)
def test_unicode_text_is_scored_like_in_process(cluster, tiny_dir):
    prompts = ["café 🎬", "映画は", "הסרט", "the movie"]
    completions = ["très bien ✓", "素晴らしい", "היה נהדר", "was great . 👍"]
    status, reply = post(cluster, "/reward-fn", score_json(prompts, completions))
    assert status == 200, reply
    assert reply["rewards"] == [float(len(p) + len(c)) for p, c in zip(prompts, completions, strict=True)]
    learned = cluster["handles"]["learned"].score.remote(prompts, completions).result(timeout_s=60)
    expected = LearnedRewardModel(str(tiny_dir / "reward")).score(prompts, completions)
    assert list(learned.rewards) == pytest.approx(expected, abs=1e-5)


def _urllib_post(cluster, route: str, body: bytes, token: str | None = None) -> tuple[int, dict]:
    """post() without a Content-Type: what a plain client sends; errors other than an HTTP status propagate."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(f"http://127.0.0.1:{cluster['http_port']}{route}", data=body, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.mark.bad_input(
    "HTTP body of 20 MB (over max_request_bytes), with or without the token, sent by urllib",
    "HTTP 413 `too_large` / 401 `unauthorized`, received by the client (no reset)",
)
def test_a_20_mb_body_gets_its_status_not_a_reset(cluster):
    huge = b"x" * 20_000_000
    assert _urllib_post(cluster, "/reward-guarded", huge, TOKEN) == (
        413,
        {"error": "too_large", "message": "the body is larger than max_request_bytes=2048"},
    )
    assert _urllib_post(cluster, "/reward-guarded", huge)[0] == 401
    assert _urllib_post(cluster, "/reward-guarded", score_json(["ab"], ["c"]), TOKEN)[1]["rewards"] == [3.0]


def _nested(depth: int, leaf: bytes = b"1") -> bytes:
    return b"[" * depth + leaf + b"]" * depth


@pytest.mark.parametrize(
    "body, reason",
    [
        _bad(_nested(5000), "bad_json", "HTTP body nested 5000 levels deep"),
        _bad(
            b'{"prompts": [' + _nested(5000, b'"a"') + b'], "completions": ["c"]}',
            "bad_json",
            "HTTP body with a prompt nested 5000 levels deep",
        ),
        _bad(
            b'{"prompts": [{"text": "a", "extras": {"x": ' + _nested(900) + b'}}], "completions": ["c"]}',
            "wrong_type",
            "HTTP body with a prompt's extras nested 900 levels deep",
        ),
        _bad(
            b'{"prompts": [{"text": "a", "txt": "b"}], "completions": ["c"]}',
            "wrong_type",
            "HTTP body with an unknown field in a prompt object",
        ),
        _bad(b"\xff\xfe\x00", "bad_json", "HTTP body of bytes that are no text"),
    ],
)
def test_http_malformed_bodies_get_400_never_500(cluster, body, reason):
    status, reply = _urllib_post(cluster, "/reward-fn", body)
    assert status == 400 and reply["error"] == reason and reply["message"], reply
    assert len(reply["message"]) < 1000  # names where the body is wrong without echoing it
    assert _urllib_post(cluster, "/reward-fn", score_json(["ab"], ["c"]))[1]["rewards"] == [3.0]


def test_openapi_schema_and_docs_under_the_route_prefix(cluster):
    base = f"http://127.0.0.1:{cluster['http_port']}/reward-fn"
    with urllib.request.urlopen(f"{base}/openapi.json", timeout=30) as response:
        schema = json.loads(response.read())
    operation = schema["paths"]["/"]["post"]
    assert operation["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ScoreBody"
    }
    components = schema["components"]["schemas"]
    assert {"ScoreBody", "PromptBody", "ChatMessageBody", "RewardReply", "ErrorBody"} <= set(components)
    assert set(components["ScoreBody"]["required"]) == {"prompts", "completions"}
    assert {"400", "401", "413", "500", "504"} <= set(operation["responses"])
    assert schema["servers"] == [{"url": "/reward-fn"}]  # the docs page sends its requests under the prefix
    with urllib.request.urlopen(f"{base}/docs", timeout=30) as response:
        assert response.status == 200 and b"/reward-fn/openapi.json" in response.read()


# --- property-based: generated bodies never get a 5xx, and the service answers a good request after each -----

JSON_LEAVES = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
JSON_VALUES = st.recursive(
    JSON_LEAVES, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
)
# Completions the tiny function turns into model failures (a 5xx that is rightly the service's) are left out.
COMPLETION = st.text(max_size=20).filter(lambda c: c not in ("NAN", "INF", "RAISE") and not c.startswith("SLOW"))
PROMPT = st.text(max_size=20) | st.fixed_dictionaries(
    {},
    optional={
        "text": st.text(max_size=20),
        "messages": st.lists(st.fixed_dictionaries({"role": st.text(max_size=5), "content": st.text(max_size=10)})),
        "extras": st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=3),
    },
)
SCORE_LIKE = st.fixed_dictionaries(
    {},
    optional={
        "prompts": st.lists(PROMPT, max_size=4) | JSON_VALUES,
        "completions": st.lists(COMPLETION, max_size=4) | JSON_VALUES,
    },
)


def _serves_after(cluster, status: int, reply: dict) -> None:
    assert status < 500, reply
    assert status == 200 or (reply["error"] and reply["message"]), reply
    assert _urllib_post(cluster, "/reward-fn", score_json(["ab"], ["c"]))[1]["rewards"] == [3.0]


@settings(max_examples=50, deadline=None)
@given(body=SCORE_LIKE | JSON_VALUES)
def test_generated_json_bodies_never_get_a_5xx(cluster, body):
    status, reply = _urllib_post(cluster, "/reward-fn", json.dumps(body).encode())
    if status == 200:
        assert len(reply["rewards"]) == len(body["prompts"])
    _serves_after(cluster, status, reply)


@settings(max_examples=50, deadline=None)
@given(body=st.binary(max_size=4096))
def test_generated_raw_bytes_never_get_a_5xx(cluster, body):
    for route, token in (("/reward-fn", None), ("/reward-guarded", TOKEN)):
        status, reply = _urllib_post(cluster, route, body, token)
        assert status in (200, 400, 413), reply
        _serves_after(cluster, status, reply)
