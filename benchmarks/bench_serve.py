"""Load benchmark of ``etalage serve``: a client at increasing concurrency against a served model on the
loopback, beside the same model called in-process on the same pictures, in the same run.

- throughput at saturation (products/s, one product a request, the best of the concurrency sweep) as a
  ratio to batch prediction's (``classify`` on batches of the model's size, in-process): goal >= 0.7;
- p50 and p99 latency at half the saturated load (an open loop: requests sent at a fixed rate whatever the
  answers) as a ratio to the bare pipeline on one product (``classify([one])``): goal p50 <= 2;
- the server's memory (VmRSS from /proc, sampled every 1,000 requests) over --memory-requests (10,000):
  flat once warm (the last sample within 5% of the one after the first 1,000).

The in-process figures are taken before and after the server runs (interleaved; their mean is the
baseline), so a loaded shared machine moves both sides. Bounded by --max-minutes (each phase by its
share of it) and --requests-per-step. The server is `etalage serve` in a child process; the client is
asyncio + httpx in this one (about one core's worth, taken from the same machine: past ~1,500 requests/s
the client, not the server, would be measured).

    python benchmarks/bench_serve.py --fusion WORK/fusion --data DEMO/test.bson --ocr-cache WORK/ocr.sqlite
    python benchmarks/bench_serve.py --run RUN --data test.bson
    python benchmarks/bench_serve.py --classifier bench_serve:toy --data ../shared/data/cdiscount/train_example.bson \
        --max-minutes 2 --memory-requests 2000          # a trial without a trained model
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent


# ---------------------------------------------------------------------------------------------
# a toy model for trials: the real decoding, a batched matrix product, top-5


class ToyClassifier:
    """Decodes and letterboxes every picture (as the core does), one matrix product per batch: a model
    whose cost grows with the batch like a CPU forward, for trying the benchmark without a trained run."""

    max_batch = 32

    def __init__(self, side: int = 64, classes: int = 64):
        rng = np.random.default_rng(0)
        self.side = side
        self.weights = rng.standard_normal((side * side * 3, classes)).astype(np.float32) / side
        self.ids = 1000000000 + np.arange(classes)

    def classify(self, listings):
        from etalage.catalog.pictures import decode_picture, letterbox
        from etalage.serve.model import Category, Proposal

        x = np.stack([np.mean([letterbox(decode_picture(p), self.side) for p in listing.pictures], axis=0)
                      for listing in listings]).reshape(len(listings), -1).astype(np.float32) / 255
        logits = x @ self.weights
        probs = np.exp(logits - logits.max(1, keepdims=True))
        probs /= probs.sum(1, keepdims=True)
        out = []
        for row in probs:
            top = np.argsort(-row)[:5]
            out.append(Proposal([Category(int(self.ids[k]), ("TOY", "TOY", f"CLASS {k}"), float(row[k])) for k in top],
                                ["core"]))
        return out

    def close(self):
        pass


def toy() -> ToyClassifier:
    return ToyClassifier()


# ---------------------------------------------------------------------------------------------
# the baseline: the model in this process


def load_products(data: str, n: int) -> list:
    from etalage.catalog import Catalog
    from etalage.serve.model import Listing

    cat = Catalog.open(data)
    return [Listing(pictures=cat[i].pictures, product_id=cat[i].product_id) for i in range(min(n, len(cat)))]


def bare(source, listings: list, seconds: float) -> dict:
    """Batch throughput (products/s) and one-product latency (ms) of the model called directly."""
    model = source()
    try:
        model.classify(listings[: model.max_batch])  # warm-up
        done, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds / 2 or done < len(listings):
            start = done % len(listings)
            batch = listings[start:start + model.max_batch]
            model.classify(batch)
            done += len(batch)
        batch_rate = done / (time.perf_counter() - t0)
        latencies, t0 = [], time.perf_counter()
        while (time.perf_counter() - t0 < seconds / 2 and len(latencies) < 2000) or len(latencies) < 20:
            one = listings[len(latencies) % len(listings)]
            t = time.perf_counter()
            model.classify([one])
            latencies.append((time.perf_counter() - t) * 1000)
    finally:
        model.close()
    return {"batch_products_per_s": batch_rate, "one_p50_ms": float(np.percentile(latencies, 50)),
            "one_p99_ms": float(np.percentile(latencies, 99)), "one_n": len(latencies)}


def batch_job(source, listings: list, work: Path) -> dict:
    """What the issue measures against: the batch job on the same pictures, as a dump (``etalage predict`` for a
    core run, ``etalage fusion predict`` for a fusion model), products/s over the whole job."""
    import shutil

    from etalage.catalog.pack import NewProduct, write_products
    from etalage.compute import Compute
    from etalage.core.predict import PredictOptions

    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    dump = write_products(work / "listings.bson", [NewProduct(li.product_id, li.pictures, li.title)
                                                   for li in listings])
    compute = Compute(progress=False)
    t0 = time.perf_counter()
    if source.run:
        from etalage.pipeline.predict import predict_core

        predict_core(source.run, dump, work / "pred", PredictOptions(), compute=compute)
        job = "etalage predict"
    else:
        from etalage.pipeline.plan import PredictPlan
        from etalage.pipeline.predict import JobSettings, predict_file
        from etalage.pipeline.workdir import WorkDir

        settings = JobSettings(ocr_cache=Path(source.ocr_cache) if source.ocr_cache else None)
        predict_file(PredictPlan.from_model(source.fusion), dump, WorkDir(work / "work"), settings, compute)
        job = "etalage fusion predict"
    return {"job": job, "products_per_s": len(listings) / (time.perf_counter() - t0)}


# ---------------------------------------------------------------------------------------------
# the server and its clients


def multipart(listing) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="picture"; filename="{i}.jpg"\r\n'
             f"Content-Type: image/jpeg\r\n\r\n".encode() + p + b"\r\n" for i, p in enumerate(listing.pictures)]
    if listing.product_id is not None:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="id"\r\n\r\n{listing.product_id}\r\n'
                     .encode())
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def start_server(model_args: list[str], port: int, extra: list[str]) -> subprocess.Popen:
    import httpx

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, "-m", "etalage.cli", "serve", *model_args, "--port", str(port), "-q",
                             *extra], cwd=ROOT, env=env)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"etalage serve exited {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("etalage serve was not ready within 10 minutes")


async def _post(client, bodies, i, latencies, errors):
    body, ctype = bodies[i % len(bodies)]
    t = time.perf_counter()
    r = await client.post("/v1/classify", content=body, headers={"content-type": ctype})
    if r.status_code == 200:
        latencies.append((time.perf_counter() - t) * 1000)
    else:
        errors.append(r.status_code)


async def closed_loop(url: str, bodies: list, concurrency: int, seconds: float, max_requests: int) -> dict:
    """``concurrency`` clients, each sending its next request when the last is answered."""
    import httpx

    latencies, errors, sent = [], [], [0]
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        t0 = time.perf_counter()

        async def worker():
            while time.perf_counter() - t0 < seconds and sent[0] < max_requests:
                sent[0] += 1
                await _post(client, bodies, sent[0], latencies, errors)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return {"concurrency": concurrency, "answered": len(latencies), "errors": len(errors), "seconds": wall,
            "products_per_s": len(latencies) / wall, **_percentiles(latencies)}


async def open_loop(url: str, bodies: list, rate: float, seconds: float) -> dict:
    """Requests sent every 1/rate s whatever the answers (the load a catalogue's listings make)."""
    import httpx

    latencies, errors, tasks = [], [], []
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=httpx.Limits(max_connections=1000)) as client:
        t0 = time.perf_counter()
        for i in range(int(rate * seconds)):
            await asyncio.sleep(max(0.0, t0 + i / rate - time.perf_counter()))
            tasks.append(asyncio.ensure_future(_post(client, bodies, i, latencies, errors)))
        await asyncio.gather(*tasks)
    return {"rate": rate, "answered": len(latencies), "errors": len(errors), **_percentiles(latencies)}


def _percentiles(latencies: list) -> dict:
    if not latencies:
        return {"p50_ms": None, "p99_ms": None}
    return {"p50_ms": float(np.percentile(latencies, 50)), "p99_ms": float(np.percentile(latencies, 99))}


def rss_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process, in MB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


async def memory_run(url: str, bodies: list, pid: int, requests: int, concurrency: int, seconds: float) -> dict:
    samples, t0 = [], time.perf_counter()
    for _ in range(max(1, requests // 1000)):
        if time.perf_counter() - t0 > seconds:
            break
        await closed_loop(url, bodies, concurrency, seconds, min(1000, requests))
        samples.append(round(rss_mb(pid)[0], 1))
    growth = (samples[-1] - samples[0]) / samples[0] if len(samples) > 1 else 0.0
    return {"rss_mb_every_1000": samples, "peak_mb": rss_mb(pid)[1], "growth_after_warmup": growth,
            "flat": bool(abs(growth) <= 0.05)}


# ---------------------------------------------------------------------------------------------


def sweep(url: str, bodies: list, levels: list[int], seconds: float, max_requests: int) -> list[dict]:
    """Throughput at increasing concurrency; stops once doubling the clients gains under 5%."""
    rows = []
    for c in levels:
        row = asyncio.run(closed_loop(url, bodies, c, seconds, max_requests))
        rows.append(row)
        print(f"  concurrency {c:4d}: {row['products_per_s']:8.1f} products/s, p50 {row['p50_ms'] or 0:7.1f} ms, "
              f"p99 {row['p99_ms'] or 0:7.1f} ms, {row['errors']} errors", flush=True)
        best = max(r["products_per_s"] for r in rows[:-1]) if len(rows) > 1 else 0
        if len(rows) > 2 and row["products_per_s"] < best * 1.05:
            break
    return rows


def measure(args, source, listings: list) -> dict:
    budget = args.max_minutes * 60
    print(f"bare model, {len(listings)} products ...", flush=True)
    before = bare(source, listings, budget * 0.1)
    port = args.port
    proc = start_server(args.model_args, port, ["--max-queue", "100000", "--max-connections", "2000"])
    url = f"http://127.0.0.1:{port}"
    bodies = [multipart(listing) for listing in listings]
    try:
        print("served: concurrency sweep ...", flush=True)
        rows = sweep(url, bodies, args.concurrency, budget * 0.4 / len(args.concurrency), args.requests_per_step)
        saturated = max(r["products_per_s"] for r in rows)
        print(f"served: half load ({saturated / 2:.1f} requests/s) ...", flush=True)
        half = asyncio.run(open_loop(url, bodies, saturated / 2, budget * 0.15))
        print(f"served: memory over {args.memory_requests} requests ...", flush=True)
        memory = asyncio.run(memory_run(url, bodies, proc.pid, args.memory_requests, 16, budget * 0.2))
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(120)
    after = bare(source, listings, budget * 0.1)
    job = batch_job(source, listings, Path(args.work)) if source.factory is None else None
    return {"bare_before": before, "bare_after": after, "batch_job": job, "sweep": rows, "half_load": half,
            "memory": memory, "server_exit": rc}


def summary(res: dict) -> dict:
    batch = float(np.mean([res["bare_before"]["batch_products_per_s"], res["bare_after"]["batch_products_per_s"]]))
    one = float(np.mean([res["bare_before"]["one_p50_ms"], res["bare_after"]["one_p50_ms"]]))
    saturated = max(r["products_per_s"] for r in res["sweep"])
    half = res["half_load"]
    job = res.get("batch_job") or {}
    job_rate = job.get("products_per_s")
    goal_ratio = saturated / job_rate if job_rate else saturated / batch  # the issue's: against the batch job
    return {"batch_products_per_s": float(batch), "served_products_per_s": saturated,
            "throughput_ratio": saturated / batch, "batch_job": job.get("job"), "batch_job_products_per_s": job_rate,
            "throughput_over_batch_job": saturated / job_rate if job_rate else None,
            "throughput_goal_met": goal_ratio >= 0.7,
            "one_product_p50_ms": float(one), "half_load_p50_ms": half["p50_ms"], "half_load_p99_ms": half["p99_ms"],
            "p50_ratio": (half["p50_ms"] or float("inf")) / one, "p99_ratio": (half["p99_ms"] or float("inf")) / one,
            "p50_goal_met": (half["p50_ms"] or float("inf")) / one <= 2.0, "memory_flat": res["memory"]["flat"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    model = p.add_mutually_exclusive_group(required=True)
    model.add_argument("--fusion", help="a fusion model folder")
    model.add_argument("--run", help="a core run")
    model.add_argument("--classifier", help="MODULE:FACTORY (bench_serve:toy for a trial)")
    p.add_argument("--ocr-cache", help="the OCR cache of the fusion model's specialists")
    p.add_argument("--data", required=True, help="a dump whose products are the requests (e.g. the demo's test.bson)")
    p.add_argument("--products", type=int, default=512, help="distinct products sent (cycled)")
    p.add_argument("--concurrency", default="1,2,4,8,16,32,64,128", help="client levels of the sweep")
    p.add_argument("--requests-per-step", type=int, default=20000, help="requests at most per sweep level")
    p.add_argument("--memory-requests", type=int, default=10000)
    p.add_argument("--max-minutes", type=float, default=10.0, help="the whole benchmark's time budget")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--work", default="/tmp/etalage-bench-serve", help="where the batch job's dump and outputs go")
    p.add_argument("--out", default=str(HERE / "results" / "serve.json"))
    args = p.parse_args()
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    sys.path.insert(0, str(HERE))
    from etalage.serve.model import ModelSource

    source = ModelSource(fusion=args.fusion, run=args.run, ocr_cache=args.ocr_cache, factory=args.classifier)
    flags = {"fusion": "--fusion", "run": "--run", "factory": "--classifier"}
    args.model_args = [a for k, flag in flags.items() if getattr(source, k) for a in (flag, getattr(source, k))]
    if args.ocr_cache:
        args.model_args += ["--ocr-cache", args.ocr_cache]
    listings = load_products(args.data, args.products)
    res = measure(args, source, listings)
    res["summary"] = summary(res)
    res["setup"] = {"model": source.describe(), "data": args.data, "products": len(listings),
                    "machine": f"{platform.node()} {os.cpu_count()} CPUs", "date": time.strftime("%Y-%m-%d"),
                    "command": " ".join(sys.argv)}
    from etalage.files import write_json_atomic

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out, res)
    print(json.dumps(res["summary"], indent=1))


if __name__ == "__main__":
    main()
