"""megaclass serve: the HTTP API over an export, with real HTTP requests to a real server."""

from __future__ import annotations

import concurrent.futures
import contextlib
import shutil
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pytest
import uvicorn

from megaclass.inference import load_export, write_search_index
from megaclass.serve.app import create_app
from megaclass.serve.search import ExactSearch
from megaclass.serve.server import load_app
from tests.distributed.harness import free_port
from tests.integration.helpers import TINY, megaclass, set_args, write_features


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """A tiny feature-file run, trained and exported: (eval inputs, export folder)."""
    folder = tmp_path_factory.mktemp("served")
    data = write_features(folder / "data", num_classes=97)
    overrides = [*TINY, "data.source='features'", f"data.path='{data}'", "data.num_classes=0"]
    overrides.append("train.steps=6")
    run, out = folder / "run", folder / "export"
    assert megaclass("train", "--run-dir", str(run), *set_args(overrides)).returncode == 0
    assert megaclass("export", str(run), str(out)).returncode == 0  # the index: auto, an HNSW
    return np.load(data / "eval_x.npy"), out


@contextlib.contextmanager
def serving(app):
    """``app`` under uvicorn on a free port, in a thread: yields its base URL."""
    port = free_port()
    runner = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    while not runner.started:
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        runner.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def server(export):
    """The app over the export (its HNSW index, a beam wider than the 97 classes: exact)
    under uvicorn: (base URL, app)."""
    app = load_app(export[1], max_rows=64, max_wait_s=0.05, ef=128)
    with serving(app) as url:
        yield url, app


def test_health_info_and_openapi(server):
    url, _ = server
    assert httpx.get(f"{url}/healthz").status_code == 200
    info = httpx.get(f"{url}/v1/info").json()
    assert (info["num_classes"], info["embedding_dim"], info["input_dim"]) == (97, 32, 12)
    assert info["index"]["kind"] == "hnsw" and info["index"]["ef"] == 128
    assert info["model_version"] == 6
    paths = httpx.get(f"{url}/openapi.json").json()["paths"]
    assert {"/v1/predict", "/v1/search", "/v1/info", "/healthz"} <= paths.keys()


def test_predict_and_search_answer_as_the_model_does(server, export):
    url, _ = server
    inputs, folder = export
    model = load_export(folder)
    expected = model.predict(inputs[:20], k=5)
    answer = httpx.post(f"{url}/v1/predict", json={"inputs": inputs[:20].tolist(), "k": 5})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["ids"] == expected.ids.tolist()
    np.testing.assert_allclose(body["scores"], expected.scores.numpy(), rtol=1e-5, atol=1e-6)
    embeddings = model.embed(inputs[:20])
    searched = httpx.post(f"{url}/v1/search", json={"embeddings": embeddings.tolist(), "k": 5})
    assert searched.status_code == 200 and searched.json()["ids"] == expected.ids.tolist()


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(server, export):
    url, app = server
    inputs, folder = export
    expected = load_export(folder).predict(inputs[:48], k=3).ids.tolist()
    before = app.state.batchers["predict"].batches

    def ask(start):
        rows = inputs[start : start + 3].tolist()
        return start, httpx.post(f"{url}/v1/predict", json={"inputs": rows, "k": 3}).json()

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(ask, range(0, 48, 3)))
    for start, body in answers:
        assert body["ids"] == expected[start : start + 3]
    assert app.state.batchers["predict"].batches - before < 16  # some requests shared a batch


@pytest.mark.parametrize(
    "body, message",
    [
        ({"inputs": [[0.0] * 11], "k": 3}, "inputs[0] has 11 values, expected 12"),
        ({"inputs": [[0.0] * 12], "k": 98}, "k must be at most the 97 classes"),
        ({"inputs": [[0.0] * 12], "k": 0}, "greater than or equal to 1"),
        ({"inputs": [], "k": 3}, "at least one row"),
        ({"k": 3}, "inputs"),
        ('{"inputs": [[' + ", ".join(["NaN"] * 12) + "]]}", "NaN or inf"),  # Python's JSON
        ('{"inputs": [[1, 2', "JSON decode error"),
    ],
)
def test_malformed_requests_get_422_with_the_reason(server, body, message):
    url, _ = server
    if isinstance(body, str):  # as sent, not encoded by the client
        headers = {"content-type": "application/json"}
        answer = httpx.post(f"{url}/v1/predict", content=body, headers=headers)
    else:
        answer = httpx.post(f"{url}/v1/predict", json=body)
    assert answer.status_code == 422 and message in answer.text


def test_the_command_line_serves_an_export(export):
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "megaclass", "serve", str(export[1]), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        else:
            pytest.fail("megaclass serve did not answer /healthz within 60 s")
        body = httpx.post(
            f"http://127.0.0.1:{port}/v1/predict", json={"inputs": export[0][:2].tolist()}
        ).json()
        assert len(body["ids"]) == 2 and len(body["ids"][0]) == 10  # k defaults to 10
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_the_exact_search_answers_the_same_and_says_so(export):
    inputs, folder = export
    expected = load_export(folder).predict(inputs[:10], k=5)
    with serving(load_app(folder, search="exact")) as url:
        assert httpx.get(f"{url}/v1/info").json()["index"] == {"kind": "exact"}
        body = httpx.post(f"{url}/v1/predict", json={"inputs": inputs[:10].tolist(), "k": 5})
        assert body.json()["ids"] == expected.ids.tolist()


def test_the_binary_graph_index_answers_the_same_and_a_missing_index_is_named(export, tmp_path):
    inputs, folder = export
    expected = load_export(folder).predict(inputs[:20], k=5)
    with pytest.raises(ValueError, match=r"has no binary_graph index \(it has: hnsw\)"):
        load_app(folder, search="binary_graph")
    graph_export = tmp_path / "graph"
    shutil.copytree(folder, graph_export)
    write_search_index(graph_export, "binary_graph")
    with serving(load_app(graph_export, ef=128)) as url:  # a beam over every class: exact
        info = httpx.get(f"{url}/v1/info").json()["index"]
        assert info["kind"] == "binary_graph" and info["bytes_per_class"] == 512 / 8 + 4 * 64
        body = httpx.post(f"{url}/v1/predict", json={"inputs": inputs[:20].tolist(), "k": 5})
        assert body.json()["ids"] == expected.ids.tolist()
        np.testing.assert_allclose(body.json()["scores"], expected.scores.numpy(), rtol=1e-5)


class _Broken(ExactSearch):
    """Fails on a row whose first value is 999 (an internal error), sleeps on one of 555, finds
    one class fewer than k for one of 777 (as a graph index may)."""

    def search(self, embeddings, k):
        if (embeddings[:, 0] == 999).any():
            raise RuntimeError("the index is broken")
        if (embeddings[:, 0] == 555).any():
            time.sleep(1.0)
        ids, scores = super().search(embeddings, k)
        short = embeddings[:, 0] == 777
        ids[short, -1], scores[short, -1] = -1, float("-inf")
        return ids, scores


def test_internal_errors_deadlines_and_big_bodies_spare_the_other_requests(export, caplog):
    inputs, folder = export
    model = load_export(folder)
    app = create_app(
        model, searcher=_Broken(model.head), max_wait_s=0.05, timeout_s=0.5, max_body_bytes=4096
    )
    good = {"embeddings": model.embed(inputs[:2]).tolist(), "k": 3}
    bad = {"embeddings": [[999.0] * 32], "k": 3}
    slow = {"embeddings": [[555.0] * 32], "k": 3}
    with serving(app) as url:
        answer = httpx.post(f"{url}/v1/search", json=bad)
        assert answer.status_code == 500 and answer.json()["error_id"] in caplog.text
        short = httpx.post(f"{url}/v1/search", json={"embeddings": [[777.0] * 32], "k": 3}).json()
        assert short["ids"][0][2] == -1 and short["scores"][0][2] is None
        answer = httpx.post(f"{url}/v1/search", json=slow)
        assert answer.status_code == 503 and "within 0.5 s" in answer.text
        time.sleep(0.6)  # the slow batch holds the worker 1 s: the next ones must not queue on it
        big = {"embeddings": [[0.0] * 32] * 100, "k": 3}
        answer = httpx.post(f"{url}/v1/search", json=big)
        assert answer.status_code == 413 and "at most 4,096 bytes" in answer.text
        chunked = httpx.post(f"{url}/v1/search", content=iter([b'{"embeddings": [[0.0]]}']))
        assert chunked.status_code == 411 and "Content-Length" in chunked.text
        # a failing request among good ones, batched together: only it fails
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            bodies = [good, good, bad, good, good, good]
            answers = list(pool.map(lambda b: httpx.post(f"{url}/v1/search", json=b), bodies))
        assert [a.status_code for a in answers] == [200, 200, 500, 200, 200, 200]
        want = model.predict(inputs[:2], k=3).ids.tolist()
        assert all(a.json()["ids"] == want for a in answers if a.status_code == 200)
        assert httpx.get(f"{url}/healthz").status_code == 200
