"""A small OpenAI-compatible chat-completions client: timeouts, retries with backoff, no key leaks."""
from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from typing import Callable, Optional

import httpx

from videoneva.errors import VideoNevaError

logger = logging.getLogger(__name__)

DEFAULT_API_BASE = "https://integrate.api.nvidia.com/v1"   # the NVIDIA API catalog
DEFAULT_JUDGE_MODEL = "mistralai/mixtral-8x7b-instruct-v0.1"
RETRY_STATUS = {408, 409, 425, 429}   # plus every 5xx
MAX_DELAY_S = 60.0


class JudgeAPIError(VideoNevaError):
    """The endpoint refused a request in a way a retry cannot fix (bad key, model, URL or payload)."""


class JudgeRequestFailed(Exception):
    """A request still failed after every retry (rate limits, server errors, timeouts)."""


@dataclass(frozen=True)
class ChatSettings:
    """Where to send requests and with which sampling; defaults are NeMo mixtral_eval.py's."""

    api_base: str = DEFAULT_API_BASE
    model: str = DEFAULT_JUDGE_MODEL
    temperature: float = 0.2
    top_p: float = 0.7
    max_tokens: int = 1024
    seed: Optional[int] = 42
    timeout_s: float = 120.0
    max_retries: int = 5           # extra attempts after the first, on 429 / 5xx / network errors
    retry_backoff_s: float = 1.0   # first delay; doubled per attempt, capped at MAX_DELAY_S

    def __post_init__(self):
        if not self.api_base.startswith(("http://", "https://")):
            raise JudgeAPIError(f"--api-base must be an http(s) URL, got {self.api_base!r}")
        if self.max_retries < 0 or self.retry_backoff_s < 0 or self.timeout_s <= 0 or self.max_tokens < 1:
            raise JudgeAPIError("--max-retries and --retry-backoff must be >= 0, --timeout > 0, --max-tokens >= 1")

    @property
    def url(self) -> str:
        return self.api_base.rstrip("/") + "/chat/completions"


class ChatClient:
    """Thread-safe; one httpx connection pool shared by the worker threads.

    The API key lives only in the Authorization header; it is never logged, and any text from the
    server that is put in an error message has it masked first.
    """

    def __init__(self, settings: ChatSettings, api_key: Optional[str],
                 sleep: Callable[[float], None] = time.sleep):
        """Args:
            settings: endpoint, model, sampling, timeout and retry policy.
            api_key: sent as `Authorization: Bearer <key>`; None sends no Authorization header.
            sleep: replaced in tests.
        """
        self.settings = settings
        self._secret = api_key or None
        headers = {"Accept": "application/json"}
        if self._secret:
            headers["Authorization"] = f"Bearer {self._secret}"
        self._http = httpx.Client(headers=headers, timeout=httpx.Timeout(settings.timeout_s))
        self._sleep = sleep

    def __repr__(self) -> str:   # never show the headers
        return f"ChatClient({self.settings.url!r}, model={self.settings.model!r})"

    def _mask(self, text: str) -> str:
        return text.replace(self._secret, "***") if self._secret else text

    def _payload(self, system: str, user: str, seed: Optional[int]) -> dict:
        s = self.settings
        payload = {"model": s.model,
                   "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
                   "temperature": s.temperature, "top_p": s.top_p, "max_tokens": s.max_tokens, "stream": False}
        if seed is not None:
            payload["seed"] = seed
        return payload

    def _delay(self, attempt: int, response: Optional[httpx.Response]) -> float:
        if response is not None:
            after = response.headers.get("Retry-After", "")
            try:
                return min(MAX_DELAY_S, max(0.0, float(after)))
            except ValueError:
                pass   # absent, or an HTTP date: fall back to exponential backoff
        base = self.settings.retry_backoff_s * (2 ** (attempt - 1))
        return min(MAX_DELAY_S, base * (1.0 + 0.25 * random.random()))

    def complete(self, system: str, user: str, use_seed: bool = True, label: str = "") -> str:
        """The assistant message content for one chat request.

        Args:
            system: the system message.
            user: the user message.
            use_seed: send the configured seed (a retry after an unparseable reply drops it so the
                judge can sample a different reply).
            label: names the request in log messages (e.g. "question_id 3").
        """
        s = self.settings
        payload = self._payload(system, user, s.seed if use_seed else None)
        attempts = s.max_retries + 1
        last = ""
        for attempt in range(1, attempts + 1):
            response = None
            try:
                response = self._http.post(s.url, json=payload)
            except httpx.TransportError as exc:   # connection refused/reset, timeouts
                last = f"{type(exc).__name__}: {self._mask(str(exc))}"
            else:
                if response.status_code == 200:
                    return self._content(response)
                body = self._mask(response.text[:300])
                last = f"HTTP {response.status_code} from {s.url}: {body}"
                if response.status_code not in RETRY_STATUS and response.status_code < 500:
                    raise JudgeAPIError(last + self._hint(response.status_code))
            if attempt < attempts:
                delay = self._delay(attempt, response)
                logger.warning("%s%s; retry %d/%d in %.1fs", f"{label}: " if label else "", last.splitlines()[0],
                               attempt, s.max_retries, delay)
                self._sleep(delay)
        raise JudgeRequestFailed(f"{label}: {last} (gave up after {attempts} attempts)")

    def _content(self, response: httpx.Response) -> str:
        try:
            content = response.json()["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise JudgeAPIError(f"{self.settings.url} answered 200 but not with an OpenAI chat completion "
                                f"(choices[0].message.content): {self._mask(response.text[:300])!r}") from None
        return content if isinstance(content, str) else ""   # null content (a refusal): unparseable

    def _hint(self, status: int) -> str:
        if status in (401, 403):
            return " (check the key in the environment variable named by --api-key-env)"
        if status == 404:
            return " (check --api-base and --judge-model)"
        return ""

    def close(self) -> None:
        self._http.close()
