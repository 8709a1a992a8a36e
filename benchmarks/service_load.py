"""Load on ``featurebank serve`` over loopback, beside the offline pipeline, in one run.

1. Offline: ``embed_collection`` (decode threads + batched inference) on the image set, into a
   fresh store: the throughput the service is compared with.
2. ``featurebank serve`` in its own process; closed-loop clients (each sends one image per
   request, waits for the answer, sends the next) at 1, 8, 32 and 128 concurrent clients:
   throughput, p50 / p99 latency, statuses, and inference batch sizes read from /metrics.
3. Overload: an open-loop generator at 4x the best measured throughput for a while: how much
   is shed with 503 (+ Retry-After), latency of what is accepted, whether the server stays up,
   its RSS before and after.

    python -m benchmarks.service_load [--images fashion|photos] [--n 400] [--seconds 10]

Writes benchmarks/results/service_load.json and service_load.png. The clients run on the same
machine as the server (loopback), so on a 2-core box they take some of its CPU: they are written
on bare asyncio streams to keep that small, and the JSON records the CPU seconds they used.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import psutil

from benchmarks._common import fashion_pngs, make_photos

RESULTS = Path(__file__).parent / "results"
SERVE = "import sys; from featurebank.cli import main; sys.exit(main())"


def offline_throughput(files: list[Path], root: Path, batch: int) -> float:
    from featurebank.extractor import embed_collection

    root.mkdir(parents=True, exist_ok=True)
    summary = embed_collection([str(f) for f in files], root / "offline.h5", batch_size=batch,
                               progress=False)
    return summary.images_per_s


def start_server(args) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-c", SERVE, "serve", "--port", str(port), "--log-level", "warning",
           "--max-batch-size", str(args.batch), "--max-wait-ms", str(args.max_wait_ms),
           "--max-queue", str(args.max_queue)]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 300
    while time.time() < deadline:
        try:
            if httpx.get(base + "/readyz", timeout=1).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            if proc.poll() is not None:
                raise SystemExit(proc.stderr.read().decode()[-3000:]) from None
        time.sleep(0.3)
    raise SystemExit("the server did not become ready in 300 s")


def batch_stats(base: str) -> tuple[float, float]:
    """(sum, count) of the server's batch-size histogram."""
    from prometheus_client.parser import text_string_to_metric_families

    total = count = 0.0
    for fam in text_string_to_metric_families(httpx.get(base + "/metrics").text):
        for s in fam.samples:
            if s.name == "featurebank_batch_size_sum":
                total = s.value
            elif s.name == "featurebank_batch_size_count":
                count = s.value
    return total, count


def _summary(latencies: list[float], statuses: list[int], seconds: float) -> dict:
    ok = np.asarray([t for t, s in zip(latencies, statuses, strict=True) if s == 200])
    codes = {str(c): statuses.count(c) for c in sorted(set(statuses))}
    return {"images_per_s": round(len(ok) / seconds, 1), "requests": len(statuses),
            "statuses": codes,
            "p50_ms": round(float(np.percentile(ok, 50)) * 1000, 1) if len(ok) else None,
            "p99_ms": round(float(np.percentile(ok, 99)) * 1000, 1) if len(ok) else None}


class Connection:
    """One HTTP/1.1 keep-alive connection on bare asyncio streams.

    The load generator shares the server's machine, so it must be cheap: httpx spends about a
    millisecond of CPU per request, which on 2 cores throttled the clients themselves (at 128
    clients the server saw batches of 4, and the 4x "overload" never reached it). Writing a
    prepared request and reading one ``Content-Length`` answer costs a few microseconds.
    """

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader = self.writer = None

    async def post(self, head: bytes, body: bytes) -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self.writer.write(head + body)
        await self.writer.drain()
        status = int((await self.reader.readline()).split()[1])
        length, close = 0, False
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.lower() == "content-length":
                length = int(value)
            elif name.lower() == "connection" and "close" in value.lower():
                close = True
        await self.reader.readexactly(length)
        if close:
            await self.close()
        return status

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.reader = self.writer = None


def request_head(host: str, port: int, length: int) -> bytes:
    return (f"POST /v1/embeddings HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: image/png\r\n"
            f"Accept: application/x-npy\r\nContent-Length: {length}\r\n\r\n").encode()


def _target(base: str) -> tuple[str, int]:
    host, port = base.removeprefix("http://").split(":")
    return host, int(port)


async def closed_loop(base: str, bodies: list[bytes], clients: int, seconds: float) -> dict:
    """``clients`` tasks, each sending one image and waiting for the answer, for ``seconds``."""
    host, port = _target(base)
    heads = [request_head(host, port, len(b)) for b in bodies]
    latencies, statuses = [], []
    stop = time.perf_counter() + seconds

    async def client(i: int) -> None:
        conn, j = Connection(host, port), i
        try:
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                statuses.append(await conn.post(heads[j % len(bodies)], bodies[j % len(bodies)]))
                latencies.append(time.perf_counter() - t0)
                j += clients
        finally:
            await conn.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(clients)))
    return _summary(latencies, statuses, time.perf_counter() - t0)


async def open_loop(base: str, bodies: list[bytes], rate: float, seconds: float) -> dict:
    """Requests fired at ``rate`` per second, each on its own connection, whatever the
    answers: an overload the server cannot slow down by answering late. The rate served is
    counted up to the last answer, not the end of sending."""
    host, port = _target(base)
    heads = [request_head(host, port, len(b)) for b in bodies]
    latencies, statuses = [], []

    async def one(j: int) -> None:
        conn, t0 = Connection(host, port), time.perf_counter()
        try:
            statuses.append(await asyncio.wait_for(
                conn.post(heads[j % len(bodies)], bodies[j % len(bodies)]), 120))
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError, IndexError):
            statuses.append(0)  # refused / reset / timed out / garbled
        finally:
            await conn.close()
        latencies.append(time.perf_counter() - t0)

    tasks, t0, j = [], time.perf_counter(), 0
    while (now := time.perf_counter()) - t0 < seconds:
        due = int((now - t0) * rate)
        while j < due:
            tasks.append(asyncio.create_task(one(j)))
            j += 1
        await asyncio.sleep(0.002)
    sent = time.perf_counter() - t0
    await asyncio.gather(*tasks)
    out = _summary(latencies, statuses, time.perf_counter() - t0)
    out["offered_per_s"] = round(rate, 1)
    out["offered_achieved_per_s"] = round(j / sent, 1)
    out["shed_fraction"] = round(statuses.count(503) / max(1, len(statuses)), 3)
    if statuses.count(503):
        shed = [t for t, s in zip(latencies, statuses, strict=True) if s == 503]
        out["p50_503_ms"] = round(float(np.percentile(shed, 50)) * 1000, 1)
    return out


def chart(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["clients"]
    xs = [int(c) for c in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(xs, [rows[c]["images_per_s"] for c in rows], "o-", label="service")
    a.axhline(result["offline_images_per_s"], color="grey", ls="--", label="offline pipeline")
    a.axhline(0.8 * result["offline_images_per_s"], color="grey", ls=":", label="80 % target")
    a.set(xscale="log", xlabel="concurrent clients", ylabel="images/s", title="throughput")
    a.legend()
    b.plot(xs, [rows[c]["p50_ms"] for c in rows], "o-", label="p50")
    b.plot(xs, [rows[c]["p99_ms"] for c in rows], "s-", label="p99")
    b.set(xscale="log", yscale="log", xlabel="concurrent clients", ylabel="ms", title="latency")
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", choices=["fashion", "photos"], default="fashion")
    ap.add_argument("--n", type=int, default=400, help="distinct images")
    ap.add_argument("--seconds", type=float, default=10.0, help="per concurrency level")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32, 128])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--max-wait-ms", type=float, default=5.0)
    ap.add_argument("--max-queue", type=int, default=256)
    ap.add_argument("--overload", type=float, default=4.0, help="offered load / best throughput")
    ap.add_argument("--out", type=Path, default=RESULTS / "service_load.json")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        files = (fashion_pngs(root / "img", args.n) if args.images == "fashion"
                 else make_photos(root / "img", args.n))
        bodies = [f.read_bytes() for f in files]
        offline_throughput(files[: min(64, len(files))], root / "warm", args.batch)  # exports, caches
        offline = offline_throughput(files, root, args.batch)
        print(f"offline pipeline: {offline:.1f} img/s on {len(files)} {args.images} images")
        proc, base = start_server(args)
        server = psutil.Process(proc.pid)
        try:
            asyncio.run(closed_loop(base, bodies, 8, 2.0))  # warm-up
            rows = {}
            for c in args.clients:
                s0, n0 = batch_stats(base)
                cpu0 = time.process_time()
                rows[str(c)] = row = asyncio.run(closed_loop(base, bodies, c, args.seconds))
                row["client_cpu_s"] = round(time.process_time() - cpu0, 2)
                s1, n1 = batch_stats(base)
                row["mean_batch"] = round((s1 - s0) / max(1.0, n1 - n0), 2)
                row["vs_offline"] = round(row["images_per_s"] / offline, 3)
                print(f"{c:>4} clients: {row['images_per_s']:7.1f} img/s ({row['vs_offline']:.2f} of "
                      f"offline)  p50 {row['p50_ms']} ms  p99 {row['p99_ms']} ms  mean batch "
                      f"{row['mean_batch']}  statuses {row['statuses']}  client CPU "
                      f"{row['client_cpu_s']} s")
            best = max(r["images_per_s"] for r in rows.values())
            rss_before = server.memory_info().rss
            cpu0 = time.process_time()
            over = asyncio.run(open_loop(base, bodies, args.overload * best, args.seconds))
            over["client_cpu_s"] = round(time.process_time() - cpu0, 2)
            alive = proc.poll() is None and httpx.get(base + "/healthz").status_code == 200
            after = httpx.post(base + "/v1/embeddings", content=bodies[0],
                               headers={"content-type": "image/png"}, timeout=60).status_code
            time.sleep(1.0)
            over.update(server_alive=alive, request_after=after,
                        rss_before_mb=round(rss_before / 2**20), rss_after_mb=round(
                            server.memory_info().rss / 2**20))
            print(f"overload {args.overload:g}x ({over['offered_per_s']} req/s offered): "
                  f"{over['images_per_s']} img/s served, {100 * over['shed_fraction']:.0f} % shed "
                  f"with 503 (p50 {over.get('p50_503_ms')} ms), accepted p50 {over['p50_ms']} ms, statuses {over['statuses']}, alive: "
                  f"{alive}, next request: {after}, RSS {over['rss_before_mb']} -> "
                  f"{over['rss_after_mb']} MB")
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    result = {"images": args.images, "n": len(files), "seconds": args.seconds,
              "batch": args.batch, "max_wait_ms": args.max_wait_ms, "max_queue": args.max_queue,
              "offline_images_per_s": round(offline, 1), "clients": rows, "overload": over,
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                          "load_avg": [round(x, 2) for x in os.getloadavg()]}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    chart(result, args.out.with_suffix(".png"))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")
    return result


if __name__ == "__main__":
    main()
