"""kmock's Kubernetes API emulator on 127.0.0.1, served from a background event loop so synchronous tests (and
the synchronous ``kubernetes`` client) can use it. It stores objects like an API server but runs no
controllers: a test plays the Job controller itself (creates the pods, sets their status and the Job's)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable
from typing import Any

import kmock

RESOURCES = ("v1/pods", "v1/services", "batch/v1/jobs", "jobset.x-k8s.io/v1alpha2/jobsets")


class KubeEmulator:
    def __init__(self, pod_log: Callable[[str], str]) -> None:
        self._pod_log = pod_log  # pod name -> its log so far
        self.loop = asyncio.new_event_loop()
        self._ready: concurrent.futures.Future[str] = concurrent.futures.Future()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        async with kmock.KubernetesEmulator() as emulator, kmock.Server(emulator, host="127.0.0.1") as server:
            for resource in RESOURCES:
                emulator.resources[resource] = {}  # listing an empty kind is then [] rather than 404
            emulator[kmock.resource("", "v1", "pods"), kmock.subresource("log")] << kmock.headers(
                {"Content-Type": "text/plain"}) << (lambda request: self._pod_log(request.name).encode())
            self.emulator = emulator
            self._ready.set_result(str(server.url).rstrip("/"))
            await self._stop.wait()

    def __enter__(self) -> KubeEmulator:
        self._thread.start()
        self._task = asyncio.run_coroutine_threadsafe(self._serve(), self.loop)
        self.url = self._ready.result(timeout=20)
        return self

    def api_client(self) -> Any:
        from kubernetes import client

        return client.ApiClient(client.Configuration(host=self.url))

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self._stop.set)
        self._task.result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
