"""Who may use `streamrec serve`: cross-site writes, the token, the Host allow list, the switches for
writes and the shopper listing, and error bodies that echo no address or shopper."""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from streamrec.serve.access import Access, ApiToken, load_api_token
from streamrec.serve.app import build_app
from streamrec.serve.context import ServeContext
from streamrec.serve.server import build_context
from tests.support.serve_fixtures import StubFollower, open_access, output_value, put_list
from udfs.config import ConfigError, load_config

TOKEN = "t" * 32
EVENT = '{"user_id": 1, "item_id": 2, "behavior": "pv"}'


def test_a_cross_site_text_plain_post_is_refused(served):
    client, _, _, sent = served
    # what a form or a simple fetch of another site can send without a preflight
    r = client.post("/v1/events", content=EVENT, headers={"Content-Type": "text/plain", "Origin": "http://evil.example"})
    assert r.status_code == 403 and sent == []
    r = client.post("/v1/events", content=EVENT, headers={"Content-Type": "text/plain"})
    assert r.status_code == 415 and sent == []
    r = client.post("/v1/events", content=EVENT, headers={"Content-Type": "application/json",
                                                          "Origin": "http://evil.example"})
    assert r.status_code == 403 and sent == []
    for origin in ("http://127.0.0.1", None):  # the page itself, or a client that is not a browser
        headers = {"Content-Type": "application/json; charset=utf-8", **({"Origin": origin} if origin else {})}
        assert client.post("/v1/events", content=EVENT, headers=headers).status_code == 202
    assert len(sent) == 2


def test_an_allowed_origin_may_write(served):
    client, _, ctx, sent = served
    ctx.access = open_access(allowed_origins=("https://shop.example",))
    app = TestClient(build_app(ctx), base_url="http://127.0.0.1")
    r = app.post("/v1/events", content=EVENT, headers={"Content-Type": "application/json",
                                                       "Origin": "https://shop.example"})
    assert r.status_code == 202 and len(sent) == 1


def test_writes_and_the_shopper_listing_are_off_by_default(make_store):
    store = make_store("s", "recs")
    sent: list = []
    ctx = ServeContext(store=store, follower=StubFollower(), send_event=sent.append, input_topic="events")  # type: ignore[arg-type]
    put_list(store, output_value(42, 1, [7]), 0)
    client = TestClient(build_app(ctx), base_url="http://localhost")
    r = client.post("/v1/events", content=EVENT, headers={"Content-Type": "application/json"})
    assert r.status_code == 403 and "serve.accept_events" in r.json()["error"] and sent == []
    r = client.get("/v1/users")
    assert r.status_code == 403 and "serve.list_users" in r.json()["error"]
    assert client.get("/v1/users/42/recommendations").json()["known"] is True


def test_a_token_guards_every_route_but_the_probes_and_the_scrape(served):
    _, store, ctx, sent = served
    put_list(store, output_value(42, 1, [7]), 0)
    ctx.access = open_access(token=ApiToken(TOKEN.encode(), "test"))
    client = TestClient(build_app(ctx), base_url="http://127.0.0.1")
    for path in ("/v1/users/42/recommendations", "/v1/users/42/recommendations/stream", "/v1/users", "/"):
        r = client.get(path)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", path
        assert client.get(path, headers={"Authorization": "Bearer " + "x" * 32}).status_code == 401
    r = client.post("/v1/events", content=EVENT, headers={"Content-Type": "application/json"})
    assert r.status_code == 401 and sent == []
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert client.get("/v1/users/42/recommendations", headers=auth).json()["known"] is True
    assert client.post("/v1/events", content=EVENT, headers={**auth, "Content-Type": "application/json"}
                       ).status_code == 202
    for path in ("/livez", "/readyz", "/healthz", "/metrics"):
        assert client.get(path).status_code == 200, path


def test_a_host_outside_the_allow_list_is_refused(served):
    _, store, ctx, _ = served
    put_list(store, output_value(42, 1, [7]), 0)
    rebound = TestClient(build_app(ctx), base_url="http://evil.example:8080")  # DNS rebinding: its own name
    for path in ("/v1/users/42/recommendations", "/healthz", "/"):
        assert rebound.get(path).status_code == 400, path
    ctx.access = open_access(allowed_hosts=("shop.internal",))
    assert TestClient(build_app(ctx), base_url="http://shop.internal:8080").get("/healthz").status_code == 200
    ctx.access = open_access(allowed_hosts=("::1",))
    assert TestClient(build_app(ctx), base_url="http://[::1]:8080").get("/healthz").status_code == 200


def test_error_bodies_echo_no_shopper(served):
    client, _, _, _ = served
    r = client.get("/v1/users/alice.smith/not-a-route")
    assert r.status_code == 404 and "alice" not in r.text


@pytest.mark.parametrize("bind", ["0.0.0.0", "10.1.2.3", "::", "shop.internal"])
def test_binding_beyond_loopback_without_a_token_fails_naming_the_key(bind):
    with pytest.raises(ConfigError, match=r"serve\.bind_address .*serve\.api_token_file"):
        load_config(environ={"STREAMREC_SERVE_BIND_ADDRESS": bind})
    cfg = load_config(environ={"STREAMREC_SERVE_BIND_ADDRESS": bind, "STREAMREC_SERVE_API_TOKEN_ENV": "TOK",
                               "TOK": TOKEN})
    assert cfg.serve.api_token_env == "TOK"


@pytest.mark.parametrize("bind", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_loopback_needs_no_token(bind):
    assert load_config(environ={"STREAMREC_SERVE_BIND_ADDRESS": bind}).serve.bind_address == bind


@pytest.mark.parametrize(("env", "key"), [
    ({"STREAMREC_SERVE_API_TOKEN_FILE": "/nonexistent/token"}, "serve.api_token_file"),
    ({"STREAMREC_SERVE_API_TOKEN_ENV": "NOT_SET_ANYWHERE"}, "serve.api_token_env"),
    ({"STREAMREC_SERVE_API_TOKEN_ENV": "TOK", "STREAMREC_SERVE_API_TOKEN_FILE": "/etc/hostname", "TOK": TOKEN},
     "serve.api_token_file and serve.api_token_env"),
])
def test_bad_token_settings_name_the_key(env, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(environ=env)


def test_the_token_is_read_from_a_file_or_a_variable_and_never_shown(tmp_path):
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    from_file = load_api_token(load_config(environ={"STREAMREC_SERVE_API_TOKEN_FILE": str(path)}).serve)
    env = {"STREAMREC_SERVE_API_TOKEN_ENV": "TOK", "TOK": TOKEN}
    from_env = load_api_token(load_config(environ=env).serve, env)
    for token in (from_file, from_env):
        assert token is not None and token.matches(f"Bearer {TOKEN}") and not token.matches(TOKEN)
        assert TOKEN not in repr(token) and TOKEN not in str(token)
    assert load_api_token(load_config(environ={}).serve) is None
    path.write_text("short")
    with pytest.raises(ConfigError, match="at least 16 needed") as err:
        load_api_token(load_config(environ={"STREAMREC_SERVE_API_TOKEN_FILE": str(path)}).serve)
    assert "short" not in str(err.value)


def test_allow_lists_come_comma_separated_from_the_environment():
    cfg = load_config(environ={"STREAMREC_SERVE_ALLOWED_HOSTS": "Shop.Internal, localhost",
                               "STREAMREC_SERVE_ALLOWED_ORIGINS": "https://shop.example"}).serve
    access = Access.from_config(cfg)
    assert access.allowed_hosts == ("shop.internal", "localhost")
    assert access.allowed_origins == ("https://shop.example",)


def test_the_service_takes_its_access_settings_from_the_config(tmp_path, monkeypatch):
    env = {"STREAMREC_SERVE_STORE_PATH": str(tmp_path / "v.sqlite"), "STREAMREC_SERVE_ACCEPT_EVENTS": "true",
           "STREAMREC_SERVE_ALLOWED_HOSTS": "shop.internal", "STREAMREC_SERVE_API_TOKEN_ENV": "TOK", "TOK": TOKEN}
    monkeypatch.setenv("TOK", TOKEN)  # the service reads the token from its own environment
    ctx, sender = build_context(load_config(environ=env))
    access = ctx.access
    ctx.store.close()
    sender.close()
    assert access.accept_events and not access.list_users and access.allowed_hosts == ("shop.internal",)
    assert access.token is not None and access.token.matches(f"Bearer {TOKEN}")


def _erasing(ctx: ServeContext) -> list:
    erased: list = []

    def send_erase(user):
        erased.append(user)
        return {"partition": 0, "offset": len(erased) - 1}

    ctx.send_erase = send_erase
    return erased


def test_erasing_a_shopper_needs_the_token_even_on_loopback(served):
    _, store, ctx, _ = served
    erased = _erasing(ctx)
    put_list(store, output_value(42, 1, [7]), 0)
    client = TestClient(build_app(ctx), base_url="http://127.0.0.1")  # the demo's access: no token
    r = client.delete("/v1/users/42")
    assert r.status_code == 403 and "serve.api_token_file" in r.json()["error"] and erased == []
    assert store.get("42") is not None
    ctx.access = open_access(token=ApiToken(TOKEN.encode(), "test"))
    client = TestClient(build_app(ctx), base_url="http://127.0.0.1")
    assert client.delete("/v1/users/42").status_code == 401 and erased == []
    auth = {"Authorization": f"Bearer {TOKEN}"}
    r = client.delete("/v1/users/42", headers={**auth, "Origin": "http://evil.example"})
    assert r.status_code == 403 and erased == []  # a page elsewhere holding the token still cannot
    assert client.delete("/v1/users/a%00b", headers=auth).status_code == 400 and erased == []


def test_an_erased_shopper_leaves_the_view_at_once_and_the_request_reaches_the_topic(served):
    _, store, ctx, _ = served
    erased = _erasing(ctx)
    for offset, user in enumerate((42, 43)):
        put_list(store, output_value(user, 1, [7]), offset)
    ctx.access = open_access(token=ApiToken(TOKEN.encode(), "test"))
    client = TestClient(build_app(ctx), base_url="http://127.0.0.1")
    auth = {"Authorization": f"Bearer {TOKEN}"}
    r = client.delete("/v1/users/42", headers=auth)
    assert r.status_code == 202 and r.json() == {"user_id": 42, "topic": "events", "partition": 0, "offset": 0}
    assert erased == [42] and store.get("42") is None and store.get("43") is not None
    assert client.get("/v1/users/42/recommendations", headers=auth).json()["known"] is False
    assert client.delete("/v1/users/42", headers=auth).status_code == 202 and erased == [42, 42]  # idempotent


def test_a_broker_that_is_down_erases_nothing_and_says_so(served):
    _, store, ctx, _ = served
    put_list(store, output_value(42, 1, [7]), 0)

    def down(user):
        raise ConnectionError("no broker at 10.0.0.7:9092")

    ctx.send_erase = down
    ctx.access = open_access(token=ApiToken(TOKEN.encode(), "test"))
    client = TestClient(build_app(ctx), base_url="http://127.0.0.1", raise_server_exceptions=False)
    r = client.delete("/v1/users/42", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 503 and "10.0.0.7" not in r.text and store.get("42") is not None
