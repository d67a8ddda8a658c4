"""The admin token file and the request policy (pure: no server)."""

from __future__ import annotations

import os
import stat

import pytest

from poolai.node import auth
from poolai.node.auth import Policy, decide

TOKEN = "t" * 43
LOCAL = Policy(TOKEN)
REMOTE = Policy(TOKEN, remote=True)


def req(policy, method="GET", path="/api/status", host="127.0.0.1:8740", **headers):
    return decide(policy, method, path,
                  {"host": host, **{k.replace("_", "-"): v for k, v in headers.items()}})


# ----------------------------------------------------------------------------- token file


def test_token_is_made_once_with_mode_0600_and_reused(tmp_path):
    token, created = auth.load_or_create_token(tmp_path)
    assert created and len(token) >= 32
    mode = stat.S_IMODE(os.stat(tmp_path / auth.TOKEN_FILE).st_mode)
    assert mode == 0o600
    again, created_again = auth.load_or_create_token(tmp_path)
    assert (again, created_again) == (token, False)
    assert auth.read_token(tmp_path) == token
    assert auth.auth_headers(tmp_path) == {"Authorization": f"Bearer {token}"}


def test_token_open_to_others_is_refused_not_used(tmp_path):
    auth.load_or_create_token(tmp_path)
    os.chmod(tmp_path / auth.TOKEN_FILE, 0o644)
    with pytest.raises(auth.TokenError, match="chmod 600"):
        auth.load_or_create_token(tmp_path)
    assert auth.read_token(tmp_path) is None
    assert auth.auth_headers(tmp_path) == {}


@pytest.mark.parametrize("content", [b"", b"short\n", b"x" * 2000, b"not a token with spaces " * 3])
def test_malformed_token_file_is_an_error(tmp_path, content):
    path = tmp_path / auth.TOKEN_FILE
    path.write_bytes(content)
    os.chmod(path, 0o600)
    with pytest.raises(auth.TokenError, match="delete it"):
        auth.load_or_create_token(tmp_path)


def test_no_token_file_reads_as_none(tmp_path):
    assert auth.read_token(tmp_path) is None


# ----------------------------------------------------------------------------- policy


def test_reads_are_open_on_loopback_and_admin_needs_the_token():
    assert req(LOCAL).allowed
    assert req(LOCAL, host="localhost:8740").allowed
    assert req(LOCAL, host="[::1]:8740").allowed
    assert req(LOCAL, "POST", "/api/admin/drain").status == 401
    assert req(LOCAL, "GET", "/api/admin/jobs/x/output").status == 401
    assert req(LOCAL, "POST", "/api/admin/drain", authorization="Bearer wrong").status == 401
    assert req(LOCAL, "POST", "/api/admin/drain", authorization=f"Basic {TOKEN}").status == 401
    assert req(LOCAL, "POST", "/api/admin/drain", authorization="Bearer ").status == 401
    assert req(LOCAL, "POST", "/api/admin/drain", authorization=f"Bearer {TOKEN}").allowed
    assert req(LOCAL, "POST", "/api/admin/drain", authorization=f"bearer {TOKEN}").allowed


def test_every_state_change_needs_the_token_but_the_owners_socket_holds_it():
    for method, path in (("POST", "/api/files"), ("POST", "/api/files/ab/unpin"),
                         ("POST", "/api/files/ab/pin"), ("POST", "/api/storage/repair"),
                         ("DELETE", "/api/anything"), ("PUT", "/api/x")):
        assert req(LOCAL, method, path).status == 401, (method, path)
        assert req(LOCAL, method, path, authorization="Bearer wrong").status == 401
        assert req(LOCAL, method, path, authorization=f"Bearer {TOKEN}").allowed
        owner = decide(LOCAL, method, path, {"host": "localhost"}, owner_socket=True)
        assert owner.allowed, (method, path)
    # the socket holds the token's authority, not an exemption from the other rules
    assert decide(LOCAL, "POST", "/api/files", {"host": "evil.example"}, owner_socket=True).status == 403
    assert decide(LOCAL, "POST", "/api/files", {"host": "localhost", "origin": "http://evil.example"},
                  owner_socket=True).status == 403
    assert req(LOCAL, "GET", "/api/files/ab/stat").allowed  # reads stay open on loopback


def test_dns_rebinding_host_is_refused_even_with_the_token():
    verdict = req(LOCAL, host="evil.example:8740", authorization=f"Bearer {TOKEN}")
    assert verdict.status == 403 and "loopback" in verdict.reason
    assert req(LOCAL, host="").status == 403
    assert req(LOCAL, host="127.0.0.1.evil.example").status == 403


def test_cross_origin_state_changes_are_refused():
    token = f"Bearer {TOKEN}"
    # another site's form or fetch, even one on another port of the same host
    for origin in ("http://evil.example", "http://127.0.0.1:9999"):
        assert req(LOCAL, "POST", "/api/admin/drain", origin=origin, authorization=token).status == 403
    assert req(LOCAL, "POST", "/api/admin/drain", origin="null", authorization=token).status == 403
    assert req(LOCAL, "POST", "/api/jobs/x", sec_fetch_site="same-site", authorization=token).status == 403
    assert req(LOCAL, "POST", "/api/jobs/x", sec_fetch_site="cross-site", authorization=token).status == 403
    # the page itself (same origin), and clients that send no Origin (CLI, scripts)
    assert req(LOCAL, "POST", "/api/admin/drain", origin="http://127.0.0.1:8740", authorization=token,
               sec_fetch_site="same-origin").allowed
    assert req(LOCAL, "POST", "/api/admin/drain", authorization=token).allowed
    # reading is not a state change; the browser keeps other origins from seeing the answer
    assert req(LOCAL, "GET", origin="http://evil.example").allowed


def test_remote_binding_needs_the_token_for_everything_but_the_page_shell():
    assert req(REMOTE, host="node.example:8740").status == 401
    assert req(REMOTE, path="/metrics", host="node.example:8740").status == 401
    assert req(REMOTE, host="node.example:8740", authorization=f"Bearer {TOKEN}").allowed
    for path in ("/", "/static/app.js", "/static/style.css"):
        assert req(REMOTE, path=path, host="node.example:8740").allowed


def test_is_loopback():
    assert all(map(auth.is_loopback, ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"]))
    assert not any(map(auth.is_loopback, ["0.0.0.0", "::", "192.168.1.5", "example.com"]))
    assert Policy.for_bind(TOKEN, "127.0.0.1") == Policy(TOKEN, remote=False)
    assert Policy.for_bind(TOKEN, "0.0.0.0") == Policy(TOKEN, remote=True)


def test_empty_token_never_matches():
    assert not auth.token_matches("Bearer ", "")
    assert req(Policy(""), "POST", "/api/admin/drain", authorization="Bearer ").status == 401
