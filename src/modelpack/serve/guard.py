"""The guard every protocol calls: who may call (keys), what (scopes, per model too), how often (per key and per
model), how many bytes at once (the in-flight budget), and what gets counted (metrics).

HTTP (`serve.app`) and gRPC (`serve.protocols.grpc_v2`) call the same `Guard` and import nothing of each other;
this module imports neither. A call is checked twice: `admit` when it arrives (its key and the scope of what it
calls, before any of its body is read), and `check_model` when the protocol has decoded the model it names (a
scope limited to some models, and the model's own rate limit). `Core.model_for` is where every protocol resolves
a model, and it asks `check_model` first, so no protocol can skip it.
"""

from __future__ import annotations

import contextvars
import math
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError, RateLimited, RequestError, Unauthorized
from .auth import ApiKey, KeyRing, Rate, TokenBucket
from .limits import Budget
from .metrics import Metrics, model_labels

# The metric labels of a model the guard refused a call on (version ""), for the call's request series when no
# version answered it; read once, by whoever counts the call (`Guard.refused_labels`).
_REFUSED_ON: contextvars.ContextVar[str | None] = contextvars.ContextVar("modelpack_refused_on", default=None)


@dataclass(frozen=True)
class Access:
    """Who may make a call: public (no scope), or a key with `scope`; `per_model` calls name a model, and a scope
    limited to some models (`infer@digits`) is checked against the one they name."""

    scope: str | None
    per_model: bool = False


# The one table of access rules: HTTP routes (`serve.routes`) and gRPC methods (`grpc_v2`) both point here.
PUBLIC = Access(None)
SERVER_METADATA = Access("metadata")  # /v2, /openapi.json, /docs, gRPC ServerMetadata
MODEL_METADATA = Access("model", per_model=True)  # a model's metadata and readiness: infer or metadata keys
INFER = Access("infer", per_model=True)
ADMIN = Access("admin")  # /metrics, the repository index
MODEL_ADMIN = Access("admin", per_model=True)  # loading and unloading one model


@dataclass(slots=True)
class Caller:
    """Who is making a call and what it calls: what `Core.model_for` checks the model it names against."""

    key: ApiKey | None
    access: Access


class Guard:
    """Keys, scopes, rate limits (per key and per model), the in-flight byte budget and the metrics."""

    def __init__(self, keys: KeyRing, budget: Budget, metrics: Metrics,
                 model_rates: dict[str, Rate] | None = None) -> None:
        self.keys = keys
        self.budget = budget
        self.metrics = metrics
        self.model_rates = model_rates or {}
        self._buckets: dict[str, TokenBucket] = {}
        self._lock = threading.Lock()
        self.refused: Counter[tuple[str, str]] = Counter()  # (model, scope | rate): calls refused on a model
        metrics.model_refusals = self.refused
        # Count a finished call: (route, status, seconds, key name, model labels); the metrics' own method, bound
        # once, since every request calls it.
        self.observe = metrics.observe

    @classmethod
    def build(cls, api_key: str | None, keys_file: Path | None, rate_limit: str | None,
              model_rate_limit: Sequence[str], budget: Budget, metrics: Metrics) -> Guard:
        return cls(KeyRing.build(api_key, keys_file, rate_limit), budget, metrics, parse_model_rates(model_rate_limit))

    def admit(self, authorization: str | None, access: Access, target: str) -> ApiKey | None:
        """The caller's key (None when the server has no keys): 401 without a valid one, 403 without the scope,
        429 over the key's rate. Called before a request's body is read."""
        key = self.identify(authorization, access)
        self.permit(key, access, target)
        return key

    def identify(self, authorization: str | None, access: Access) -> ApiKey | None:
        """The key an `Authorization` value holds (None for a public call, or a server without keys); 401."""
        if access.scope is None or not self.keys.enabled:
            return None
        return self.keys.check(authorization)

    def permit(self, key: ApiKey | None, access: Access, target: str) -> None:
        """403 unless the key has the scope `access` needs (on some model, for a call that names one); 429 over
        the key's rate limit."""
        if key is not None and access.scope is not None:
            self.keys.authorize(key, access.scope, target, access.per_model)
            self.keys.throttle(key)

    def key_named(self, name: str | None) -> ApiKey | None:
        """The key a transport admitted, by name (gRPC hands the name on); 401 if a reload removed it since."""
        if name is None or not self.keys.enabled:
            return None
        key = self.keys.named(name)
        if key is None:
            raise Unauthorized("the API key was revoked; send a current one.", headers={"WWW-Authenticate": "Bearer"})
        return key

    def check_model(self, caller: Caller, model: str, known: bool = True) -> None:
        """403 unless the key may make this call on `model`; 429 when the model is over its rate limit. A refusal
        on a `known` model is counted in its own request series (an unknown name is not: anyone can send one)."""
        if not self.model_rates and (caller.key is None or not caller.key.models):
            return  # the key passed `permit` with a scope on every model, and no model has a limit
        try:
            self._check_model(caller, model, known)
        except RequestError as exc:
            if known:
                self.refused[(model, "rate" if exc.status == 429 else "scope")] += 1
                _REFUSED_ON.set(model_labels(model, ""))
            raise

    @staticmethod
    def start_call() -> None:
        """Forget any refusal labels the calling context carries: a request counts only its own refusal (a task
        copies its creator's context, so a refusal outside any request would otherwise label later ones)."""
        _REFUSED_ON.set(None)

    def refused_labels(self) -> str | None:
        """The labels of the model a call was refused on, once (None when it was not)."""
        labels = _REFUSED_ON.get()
        if labels is not None:
            _REFUSED_ON.set(None)
        return labels

    def _check_model(self, caller: Caller, model: str, known: bool) -> None:
        key, access = caller.key, caller.access
        if key is not None and access.scope is not None:
            self.keys.authorize_model(key, access.scope, model)
        rate = self.model_rates.get(model) or self.model_rates.get("*")
        if rate is None or not known or access.scope not in ("infer", None):
            # A model's limit is on its inferences (metadata and readiness stay answerable), and an unknown name
            # gets no bucket (a stranger could send any number of them): it is answered 404 next.
            return
        with self._lock:
            bucket = self._buckets.get(model)
            if bucket is None or bucket.rate != rate:
                bucket = self._buckets[model] = TokenBucket(rate)
            wait = bucket.take()
        if wait > 0:
            raise RateLimited(f"model {model!r} is over its rate limit ({rate.tokens:g} per "
                              f"{'second' if rate.tokens == rate.per_second else 'minute'}, --model-rate-limit); "
                              "retry later.", headers={"Retry-After": str(max(1, math.ceil(wait)))})



def parse_model_rates(items: Sequence[str]) -> dict[str, Rate]:
    """`NAME=N/s` (or `*=N/s` for every model without its own) per item, as --model-rate-limit takes them."""
    rates: dict[str, Rate] = {}
    for item in items:
        name, eq, rate = item.partition("=")
        if not eq or not name.strip():
            raise InputError(f"--model-rate-limit {item!r}: write MODEL=N/s or MODEL=N/m (or *=N/s for every model).")
        rates[name.strip()] = Rate.parse(rate, f"--model-rate-limit {item!r}")
    return rates
