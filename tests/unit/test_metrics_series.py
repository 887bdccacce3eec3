"""Metrics.record finds a request's series by what its record says, made once: the labels
must still follow the registry (a model served later, a backend removed and back)."""

from __future__ import annotations

from nexus.metrics import Metrics
from nexus.records import RequestRecord
from nexus.registry import Backend, Model, Registry


def record(model: str, backend: str = "gpu", status: int = 200) -> RequestRecord:
    rec = RequestRecord("id", "chat", model)
    rec.backend, rec.status, rec.duration_seconds = backend, status, 0.2
    rec.tokens_prompt, rec.tokens_completion = 3, 5
    return rec


def serving(registry: Registry, name: str, *models: str) -> Backend:
    backend = registry.add_backend(Backend(name=name, url=f"http://{name}", type="vllm"))
    registry.update_models(backend.id, [Model(id=m) for m in models])
    return backend


def requests(metrics: Metrics) -> dict[tuple[str, ...], float]:
    return dict(metrics.requests.values)


def durations(metrics: Metrics) -> dict[tuple[str, ...], float]:
    return {key: sum(entry[:-1]) for key, entry in metrics.duration.values.items()}


def test_a_model_is_labelled_by_name_once_a_backend_serves_it_and_not_after() -> None:
    registry = Registry()
    metrics = Metrics(registry)
    registry.on_remove.append(metrics.forget_backend)
    metrics.record(record("qwen"))
    backend = serving(registry, "gpu", "qwen")
    metrics.record(record("qwen"))
    metrics.record(record("qwen"))
    registry.update_models(backend.id, [Model(id="llama")])  # qwen is no longer served
    metrics.record(record("qwen"))
    assert requests(metrics) == {
        ("unknown", "gpu", "200", "chat"): 2,
        ("qwen", "gpu", "200", "chat"): 2,
    }
    assert durations(metrics) == {("unknown", "gpu"): 2, ("qwen", "gpu"): 2}
    assert metrics.tokens.values[("qwen", "gpu", "completion")] == 10


def test_a_removed_backend_that_comes_back_starts_its_series_again() -> None:
    registry = Registry()
    metrics = Metrics(registry)
    registry.on_remove.append(metrics.forget_backend)
    backend = serving(registry, "gpu", "qwen")
    metrics.record(record("qwen"))
    registry.remove_backend(backend.id)
    assert requests(metrics) == {} and durations(metrics) == {}
    serving(registry, "gpu", "qwen")
    metrics.record(record("qwen"))
    assert requests(metrics) == {("qwen", "gpu", "200", "chat"): 1}
    assert durations(metrics) == {("qwen", "gpu"): 1}


def test_each_status_and_endpoint_has_its_own_series() -> None:
    registry = Registry()
    metrics = Metrics(registry)
    serving(registry, "gpu", "qwen")
    for status in (200, 200, 429, 599):
        metrics.record(record("qwen", status=status))
    embedding = record("qwen")
    embedding.endpoint = "embeddings"
    metrics.record(embedding)
    assert requests(metrics) == {
        ("qwen", "gpu", "200", "chat"): 2,
        ("qwen", "gpu", "429", "chat"): 1,
        ("qwen", "gpu", "599", "chat"): 1,
        ("qwen", "gpu", "200", "embeddings"): 1,
    }
    assert durations(metrics) == {("qwen", "gpu"): 5}
    assert sum(metrics.overhead.values[()][:-1]) == 5


def test_names_clients_make_up_are_counted_as_unknown_and_not_kept() -> None:
    registry = Registry()
    metrics = Metrics(registry)
    serving(registry, "gpu", "qwen")
    for i in range(1000):
        metrics.record(record(f"made-up-{i}", backend="", status=404))
    assert requests(metrics) == {("unknown", "none", "404", "chat"): 1000}
    assert len(metrics._cells) == 0
