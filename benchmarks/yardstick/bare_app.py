"""The yardstick of benchmarks/queue.py (in a folder of its own: benchmarks/ holds a queue.py that
would shadow the standard library's in uvicorn's worker processes): a bare FastAPI app doing what imagegate's endpoints do,
minus imagegate — a status poll answers a fixed status object, a "job" sleeps for the engine time
and answers. Served by uvicorn exactly as imagegate's API is (same workers, same loop)."""

from __future__ import annotations

import time

from fastapi import FastAPI

app = FastAPI()

STATUS = {
    "request_id": "flux-1-schnell_01a22842-2865-7195-adec-0cb84d974ef8",
    "status": "QUEUED",
    "model_id": "flux-1-schnell",
    "error": None,
    "output": None,
    "progress": 0.0,
    "created_at": "2026-11-29T17:02:34.054Z",
    "updated_at": "2026-11-29T17:02:34.054Z",
    "completed_at": None,
    "queue_position": 0,
}


@app.get("/status")
def status() -> dict:
    return STATUS


@app.post("/run")
def run(seconds: float) -> dict:
    time.sleep(seconds)
    return {"output": "http://127.0.0.1/media/token/out.png"}


if __name__ == "__main__":
    import argparse
    import sys
    from pathlib import Path

    import uvicorn

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    # Served the way `imagegate serve` serves its app: uvicorn.run, one socket, N processes.
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    uvicorn.run("bare_app:app", port=args.port, workers=args.workers, log_level="warning", access_log=False)
