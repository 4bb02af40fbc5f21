"""DNS rebinding and cross-site requests: the server answers only to the hosts it is bound to (and localhost names),
and refuses requests whose ``Origin`` is another site, over real HTTP and through ``deltamem serve``'s options."""

from __future__ import annotations

import httpx
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from deltamem.cli import app as cli
from deltamem.server import create_app


def test_a_rebound_host_cannot_drop_a_table_over_real_http(seeded_db, serve):
    server = serve(seeded_db)  # the default: loopback, no token
    port = server.url.rsplit(":", 1)[1]
    version = seeded_db.version
    with httpx.Client(base_url=server.url) as http:
        rebound = http.post("/sql", json={"sql": "DROP TABLE docs CASCADE"},
                            headers={"Host": f"rebind.attacker.example:{port}"})
        assert rebound.status_code == 400, rebound.text
        detail = rebound.json()["detail"]
        assert "rebind.attacker.example" in detail and "allowed_hosts" in detail and "--allow-host" in detail
        assert http.get("/", headers={"Host": "rebind.attacker.example"}).status_code == 400
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", "LOCALHOST", "localhost:1"):
            assert http.get("/views", headers={"Host": host}).status_code == 200, host
    assert seeded_db.version == version and "docs" in seeded_db.tables()


@pytest.mark.parametrize("method, path, body", [
    ("POST", "/sql", {"sql": "DROP TABLE docs CASCADE"}),
    ("POST", "/tables/docs/changes", [{"op": "delete", "key": "refunds"}]),
    ("GET", "/views/answers", None),
])
@pytest.mark.parametrize("origin", ["https://evil.example", "http://localhost:3000", "null"])
def test_a_foreign_origin_is_refused(seeded_db, method, path, body, origin):
    client = TestClient(create_app(seeded_db), base_url="http://127.0.0.1:8000")
    version = seeded_db.version
    answer = client.request(method, path, json=body, headers={"Origin": origin})
    assert answer.status_code == 403, answer.text
    assert f"Origin {origin!r}" in answer.json()["detail"] and "http://127.0.0.1:8000" in answer.json()["detail"]
    assert seeded_db.version == version and seeded_db.table("docs").get("refunds") is not None


def test_the_servers_own_origin_is_accepted(seeded_db):
    client = TestClient(create_app(seeded_db), base_url="http://127.0.0.1:8000")
    same = {"Origin": "http://127.0.0.1:8000"}
    deleted = client.post("/tables/docs/changes", json=[{"op": "delete", "key": "refunds"}], headers=same)
    assert deleted.status_code == 200 and deleted.json()["deleted"] == 1
    assert client.get("/views", headers=same).status_code == 200
    default_port = TestClient(create_app(seeded_db), base_url="http://localhost")
    assert default_port.get("/views", headers={"Origin": "http://localhost"}).status_code == 200
    assert default_port.get("/views", headers={"Origin": "http://localhost:80"}).status_code == 200


def test_allowed_hosts_adds_names_and_star_allows_any(seeded_db):
    named = create_app(seeded_db, allowed_hosts=["Deltamem.LAN", "::1", "10.0.0.7"])
    assert TestClient(named, base_url="http://deltamem.lan:8000").get("/views").status_code == 200
    assert TestClient(named, base_url="http://10.0.0.7").get("/views").status_code == 200
    assert TestClient(named, base_url="http://[::1]:8000").get("/views").status_code == 200
    assert TestClient(named, base_url="http://localhost:8000").get("/views").status_code == 200
    refused = TestClient(named, base_url="http://other.lan:8000").get("/views")
    assert refused.status_code == 400 and "deltamem.lan" in refused.json()["detail"]
    anything = create_app(seeded_db, allowed_hosts=["*"])
    assert TestClient(anything, base_url="http://whatever.example").get("/views").status_code == 200


def test_serve_allows_the_host_it_binds_and_allow_host(tmp_path, monkeypatch):
    import uvicorn

    served = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: served.append((app, options)))
    runner = CliRunner()
    common = ["--llm", "test", "--embedder", "test"]
    result = runner.invoke(cli, ["serve", str(tmp_path / "a.db"), "--host", "127.0.0.2", *common],
                           env={"DELTAMEM_TOKEN": ""})
    assert result.exit_code == 0, result.output
    result = runner.invoke(cli, ["serve", str(tmp_path / "b.db"), "--host", "0.0.0.0", "--allow-host", "box.lan",
                                 "--allow-host", "box", *common], env={"DELTAMEM_TOKEN": "t0ken"})
    assert result.exit_code == 0, result.output
    (bound, _), (public, options) = served
    assert options["host"] == "0.0.0.0"
    assert TestClient(bound, base_url="http://127.0.0.2:8000").get("/").status_code == 200
    assert TestClient(bound, base_url="http://box.lan:8000").get("/").status_code == 400
    for host in ("box.lan", "box", "localhost"):
        assert TestClient(public, base_url=f"http://{host}:8000").get("/").status_code == 200, host
    refused = TestClient(public, base_url="http://0.0.0.0:8000").get("/")
    assert refused.status_code == 400 and "--allow-host" in refused.json()["detail"]
