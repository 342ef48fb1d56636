"""Latency of the warm service: ``POST /predict`` of one 512x512 phantom head X-ray over real HTTP (uvicorn).

``bench_service`` serves the app on a loopback port (in a thread of this process), sends a few warm-up requests,
then ``requests`` one after another from one client, and ``requests`` again shared by ``clients`` concurrent
clients (each on its own keep-alive connection). Latency is what a client waits for the whole answer (upload,
inference, JSON); the service handles one inference at a time, so under concurrency requests queue.

    PYTHONPATH=bundle python -m clinic.service_bench [--models-dir DIR] [--requests 50] [--clients 4] [--out FILE]
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

GOAL_MEDIAN_MS = 150.0  # warm POST /predict of one 512x512 X-ray, one client


def _spread(ms: list[float]) -> dict[str, float]:
    """Median and spread of latencies in milliseconds."""
    q = statistics.quantiles(ms, n=20, method="inclusive")  # 5% steps
    return {
        "median_ms": round(statistics.median(ms), 1),
        "p05_ms": round(q[0], 1),
        "p25_ms": round(q[4], 1),
        "p75_ms": round(q[14], 1),
        "p95_ms": round(q[18], 1),
        "min_ms": round(min(ms), 1),
        "max_ms": round(max(ms), 1),
    }


def _multipart(data: bytes, filename: str = "xray.png") -> tuple[bytes, str]:
    boundary = "nasalbench" + "0" * 16
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
    head += "Content-Type: application/octet-stream\r\n\r\n"
    body = head.encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


class _Client:
    """One keep-alive HTTP connection posting the same X-ray; each call's latency (ms) and the service's own time."""

    def __init__(self, port: int, body: bytes, content_type: str) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        self.body, self.headers = body, {"Content-Type": content_type}

    def post(self) -> tuple[float, float]:
        start = time.perf_counter()
        self.conn.request("POST", "/predict", body=self.body, headers=self.headers)
        res = self.conn.getresponse()
        answer = json.loads(res.read())
        ms = 1e3 * (time.perf_counter() - start)
        if res.status != 200:
            raise RuntimeError(f"/predict answered {res.status}: {answer.get('detail')}")
        return ms, 1e3 * answer["seconds"]

    def close(self) -> None:
        self.conn.close()


def _phantom_xray(folder: Path, size: int) -> Path:
    from scripts.imageio import save_xray
    from tools.phantom import render_patient

    return save_xray(folder / "bench", render_patient(1, True, n_views=1, size=size)[0].image, "png16")


def bench_service(
    models_dir: str | Path | None = None,
    requests: int = 50,
    clients: int = 4,
    size: int = 512,
    device: str | None = None,
    overrides: dict[str, Any] | None = None,
    warmup: int = 3,
) -> dict[str, Any]:
    """Warm ``POST /predict`` latency, one client and ``clients`` concurrent ones; a dict of milliseconds.

    ``models_dir``: the weights (default: the bundle's ``models/``, as ``make serve`` uses). Keys: ``single`` and
    ``concurrent`` (``_spread`` of the client latencies, the latter with ``clients`` and ``throughput_per_s``),
    ``server_median_ms`` (time inside the service, one client), ``goal_median_ms``, ``device``, ``image_size``.
    """
    from .engine import WarmInference
    from .service import ServiceSettings, create_app, running

    with tempfile.TemporaryDirectory(prefix="service_bench_") as tmp:
        work = Path(tmp)
        engine = WarmInference(work / "results", models_dir, device, overrides=overrides)
        app = create_app(ServiceSettings(work_dir=work, max_pending=clients + 1), engine)
        with running(app) as url:
            port = int(urlparse(url).port)
            body, content_type = _multipart(_phantom_xray(work, size).read_bytes())
            one = _Client(port, body, content_type)
            for _ in range(warmup):
                one.post()
            single = [one.post() for _ in range(requests)]
            one.close()

            latencies: list[float] = []
            left = [requests]
            lock = threading.Lock()

            def run(client: _Client) -> None:
                while True:
                    with lock:
                        if left[0] <= 0:
                            break
                        left[0] -= 1
                    ms, _ = client.post()
                    with lock:
                        latencies.append(ms)
                client.close()

            pool = [threading.Thread(target=run, args=(_Client(port, body, content_type),)) for _ in range(clients)]
            start = time.perf_counter()
            for t in pool:
                t.start()
            for t in pool:
                t.join()
            wall = time.perf_counter() - start
        if len(latencies) != requests:
            raise RuntimeError(f"only {len(latencies)} of {requests} concurrent requests succeeded")
    return {
        "image_size": [size, size],
        "requests": requests,
        "device": str(engine.device),
        "single": _spread([ms for ms, _ in single]),
        "server_median_ms": round(statistics.median(s for _, s in single), 1),
        "concurrent": {"clients": clients, **_spread(latencies), "throughput_per_s": round(requests / wall, 2)},
        "goal_median_ms": GOAL_MEDIAN_MS,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m clinic.service_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--models-dir", type=Path, default=None, help="trained weights (default: bundle/models)")
    p.add_argument("--requests", type=int, default=50)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--device", default=None)
    p.add_argument("--out", type=Path, default=None, help="also write the figures to this JSON file")
    a = p.parse_args(argv)
    figures = json.dumps(bench_service(a.models_dir, a.requests, a.clients, device=a.device), indent=2)
    print(figures)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(figures + "\n")


if __name__ == "__main__":
    main()
