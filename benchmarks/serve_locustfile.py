"""The locust users of benchmarks/serve_load.py (run by it in a locust subprocess: locust patches sockets
with gevent on import, so nothing else imports this file).

Each user posts batches of random images in [-1, 1] to ``/invocations`` and checks the answer: HTTP 200,
``predictions`` of shape batch x out-channels x size x size, every value finite and in [-1, 1]. The
users together send exactly ``--total-requests`` requests, then locust quits; every request's latency
and outcome goes to ``--records`` (JSON) for exact percentiles.
"""

from __future__ import annotations

import json
import time

import gevent
import numpy as np
from locust import FastHttpUser, events, task
from locust.exception import StopUser

_issued = 0
_done = 0
_records: list[dict[str, object]] = []
_bodies: list[bytes] = []


@events.init_command_line_parser.add_listener
def _options(parser) -> None:
    parser.add_argument("--image-size", type=int, default=64, help="H and W of each image")
    parser.add_argument("--in-channels", type=int, default=3)
    parser.add_argument("--out-channels", type=int, default=3)
    parser.add_argument("--batch", type=int, default=1, help="images per request")
    parser.add_argument("--total-requests", type=int, default=32, help="all users together")
    parser.add_argument("--records", default="serve_load_records.json", help="where each request's outcome goes")


@events.test_start.add_listener
def _bodies_once(environment, **_kwargs) -> None:
    """A few request bodies made once: encoding JSON per request would load the client, not the server."""
    opts = environment.parsed_options
    rng = np.random.default_rng(0)
    shape = (opts.batch, opts.in_channels, opts.image_size, opts.image_size)
    _bodies[:] = [
        json.dumps({"inputs": rng.uniform(-1, 1, shape).astype(np.float32).tolist()}).encode() for _ in range(4)
    ]


@events.request.add_listener
def _record(response_time, exception, start_time=None, **_kwargs) -> None:
    _records.append({"ms": response_time, "end": time.time(), "error": None if exception is None else str(exception)})


@events.quitting.add_listener
def _write(environment, **_kwargs) -> None:
    with open(environment.parsed_options.records, "w") as handle:
        json.dump(_records, handle)


class Client(FastHttpUser):
    network_timeout = 300.0
    connection_timeout = 30.0

    @task
    def generate(self) -> None:
        global _issued, _done
        opts = self.environment.parsed_options
        if _issued >= opts.total_requests:
            raise StopUser()
        _issued += 1
        body = _bodies[_issued % len(_bodies)]
        expected = [opts.batch, opts.out_channels, opts.image_size, opts.image_size]
        with self.client.post(
            "/invocations", data=body, headers={"Content-Type": "application/json"}, catch_response=True
        ) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {(response.text or '')[:200]}")
            else:
                answer = np.asarray(json.loads(response.text)["predictions"], dtype=np.float32)
                if list(answer.shape) != expected:
                    response.failure(f"answer of shape {list(answer.shape)}, expected {expected}")
                elif not (np.isfinite(answer).all() and np.abs(answer).max() <= 1.0 + 1e-6):
                    response.failure("answer holds values outside [-1, 1]")
        _done += 1
        if _done >= opts.total_requests:  # the last answer: quit from outside this user's greenlet
            gevent.spawn(self.environment.runner.quit)
