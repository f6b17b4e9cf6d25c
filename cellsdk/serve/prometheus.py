"""The service's counters, gauges and histograms, rendered in the Prometheus text format (no dependency).

Examples:
    >>> m = Metrics()
    >>> m.observe_request("/v1/predict", 200, 0.012)
    >>> m.observe_batch(3, 0.004)
    >>> text = m.render()
    >>> 'cellsdk_requests_total{route="/v1/predict",code="200"} 1' in text
    True
    >>> 'cellsdk_batch_size_bucket{le="4"} 1' in text
    True
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable, Sequence

__all__ = ["BATCH_BUCKETS", "LATENCY_BUCKETS", "Metrics"]

#: Request latency histogram buckets, seconds.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: Runtime batch size histogram buckets, images.
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class _Histogram:
    def __init__(self, buckets: Sequence[float]) -> None:
        self.buckets = tuple(buckets)
        self.counts = [0] * len(self.buckets)
        self.total = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1
                break
        self.total += 1
        self.sum += value

    def lines(self, name: str, labels: str = "") -> list[str]:
        out, running = [], 0
        sep = "," if labels else ""
        for bound, count in zip(self.buckets, self.counts, strict=True):
            running += count
            out.append(f'{name}_bucket{{{labels}{sep}le="{_number(bound)}"}} {running}')
        out.append(f'{name}_bucket{{{labels}{sep}le="+Inf"}} {self.total}')
        suffix = f"{{{labels}}}" if labels else ""
        out += [f"{name}_sum{suffix} {_number(self.sum)}", f"{name}_count{suffix} {self.total}"]
        return out


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Metrics:
    """Thread-safe service metrics; :meth:`render` gives the ``/metrics`` page.

    Args:
        gauges: name -> (help, a function reading the current value), e.g. the queue depth.
    """

    def __init__(self, gauges: dict[str, tuple[str, Callable[[], float]]] | None = None) -> None:
        self._lock = threading.Lock()
        self._requests: dict[tuple[str, int], int] = defaultdict(int)
        self._errors: dict[str, int] = defaultdict(int)
        self._closed: dict[str, int] = defaultdict(int)
        self._latency: dict[str, _Histogram] = {}
        self._batches = _Histogram(BATCH_BUCKETS)
        self._batch_seconds = 0.0
        self._images = 0
        self.gauges = dict(gauges or {})

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        """Count one answered request and its latency (``route``: the route template, or ``other``).

        Examples:
            >>> metrics = Metrics()
            >>> metrics.observe_request("/healthz", 200, 0.001)
            >>> 'route="/healthz"' in metrics.render()
            True
        """
        with self._lock:
            self._requests[(route, status)] += 1
            histogram = self._latency.get(route)
            if histogram is None:
                histogram = self._latency[route] = _Histogram(LATENCY_BUCKETS)
            histogram.observe(seconds)

    def observe_error(self, kind: str) -> None:
        """Count one error answer by its problem kind (``bad-image``, ``busy`` …).

        Examples:
            >>> metrics = Metrics()
            >>> metrics.observe_error("busy")
            >>> 'kind="busy"' in metrics.render()
            True
        """
        with self._lock:
            self._errors[kind] += 1

    def observe_closed(self, reason: str) -> None:
        """Count one connection the server closed on its own (``header-timeout``, ``evicted`` …).

        Examples:
            >>> metrics = Metrics()
            >>> metrics.observe_closed("evicted")
            >>> 'cellsdk_connections_closed_total{reason="evicted"} 1' in metrics.render()
            True
        """
        with self._lock:
            self._closed[reason] += 1

    def observe_batch(self, size: int, seconds: float) -> None:
        """Count one runtime call of ``size`` images that took ``seconds``.

        Examples:
            >>> metrics = Metrics()
            >>> metrics.observe_batch(8, 0.02)
            >>> "cellsdk_batch_size" in metrics.render()
            True
        """
        with self._lock:
            self._batches.observe(size)
            self._batch_seconds += seconds
            self._images += size

    def render(self) -> str:
        """The Prometheus text exposition format (version 0.0.4).

        Examples:
            >>> metrics = Metrics()
            >>> metrics.observe_request("/v1/predict", 200, 0.012)
            >>> "cellsdk_requests_total" in metrics.render()
            True
        """
        with self._lock:
            lines = ["# HELP cellsdk_requests_total HTTP requests answered, by route and status code.",
                     "# TYPE cellsdk_requests_total counter"]
            lines += [f'cellsdk_requests_total{{route="{_escape(r)}",code="{c}"}} {n}'
                      for (r, c), n in sorted(self._requests.items())]
            lines += ["# HELP cellsdk_errors_total Error answers, by problem kind.",
                      "# TYPE cellsdk_errors_total counter"]
            lines += [f'cellsdk_errors_total{{kind="{_escape(k)}"}} {n}' for k, n in sorted(self._errors.items())]
            lines += ["# HELP cellsdk_connections_closed_total Connections the server closed on its own (timeouts, "
                      "limits), by reason.", "# TYPE cellsdk_connections_closed_total counter"]
            lines += [f'cellsdk_connections_closed_total{{reason="{_escape(k)}"}} {n}'
                      for k, n in sorted(self._closed.items())]
            lines += ["# HELP cellsdk_request_duration_seconds Time from request to response, by route.",
                      "# TYPE cellsdk_request_duration_seconds histogram"]
            for route, histogram in sorted(self._latency.items()):
                lines += histogram.lines("cellsdk_request_duration_seconds", f'route="{_escape(route)}"')
            lines += ["# HELP cellsdk_batch_size Images per runtime call (micro-batches across requests).",
                      "# TYPE cellsdk_batch_size histogram"]
            lines += self._batches.lines("cellsdk_batch_size")
            lines += ["# HELP cellsdk_inference_seconds_total Time spent in runtime calls.",
                      "# TYPE cellsdk_inference_seconds_total counter",
                      f"cellsdk_inference_seconds_total {_number(self._batch_seconds)}",
                      "# HELP cellsdk_images_total Images classified.", "# TYPE cellsdk_images_total counter",
                      f"cellsdk_images_total {self._images}"]
        for name, (help_text, read) in sorted(self.gauges.items()):
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", f"{name} {_number(read())}"]
        return "\n".join(lines) + "\n"
