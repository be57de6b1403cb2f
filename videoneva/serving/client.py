"""`videoneva.serving.Client`: ask the `videoneva` Triton model over gRPC (tritonclient), with streaming.

    from videoneva.serving import Client
    with Client("127.0.0.1:8001") as c:
        answer = c.answer("What color is the shape?", media_type="video",
                          media_bytes=open("clip.mp4", "rb").read(), max_tokens=32)
        print(answer.clean_response)
        c.answer("Describe the video.", media_type="video", media_bytes=…, on_delta=print)  # streams

Media are sent once: after a server has answered about a file (and said it caches features), the
client sends only the file's sha256 (`media_digest`) for further questions about it; when the server
no longer holds those features it refuses with MEDIA_NOT_CACHED and the client sends the bytes at
once (`send_digests=False` turns this off).

The model is decoupled, so calls go through a gRPC stream; each thread keeps its stream open and
sends its requests on it one after another (opening and closing a stream per request cost ≈ 1.4 ms).
A call is retried with exponential backoff when the server is unreachable or the stream breaks
(the server restarting, a timeout); a request the server refuses (bad media, bad values) is not
retried and raises RequestFailed with the server's message. After any failure the thread's stream
is closed, so no late response of one request can reach the next. One Client can be shared by
threads: each thread gets its own gRPC connection.
"""
from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from typing import Callable, Optional

import numpy as np

from videoneva.errors import VideoNevaError
from videoneva.schema import Answer
from videoneva.serving.protocol import INPUTS, MEDIA_NOT_CACHED, MODEL_NAME, digest_of
from videoneva.serving.tensors import NUMPY_DTYPES, string_tensor


class RequestFailed(VideoNevaError):
    """The server answered this request with an error (not retried)."""


class ServerUnavailable(VideoNevaError):
    """The server could not be reached, or broke off, on every attempt."""


class RequestCancelled(VideoNevaError):
    """Raised by an on_delta callback to stop its request: the server cancels it (not retried)."""


# gRPC status codes worth another attempt: the server is (re)starting, overloaded or went away.
TRANSIENT = ("UNAVAILABLE", "CANCELLED", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "ABORTED", "UNKNOWN")


def _is_transient(exc: Exception) -> bool:
    status = str(getattr(exc, "status", lambda: "")() or "")
    text = str(exc)
    return any(code in status for code in TRANSIENT) or "Socket closed" in text or "failed to connect" in text.lower()


class Client:
    """A gRPC client of a `videoneva serve` server.

    Args:
        url: HOST:PORT of the gRPC endpoint.
        timeout: seconds one attempt may take (connect to final response).
        retries: further attempts after a transient failure.
        backoff: seconds before the first retry; doubles each time.
        model: the entry model's name.
        send_digests: send only the digest of media this server has already seen (see above).
        max_digests: digests remembered (oldest forgotten first).
    """

    def __init__(self, url: str, timeout: float = 300.0, retries: int = 3, backoff: float = 0.5,
                 model: str = MODEL_NAME, send_digests: bool = True, max_digests: int = 4096):
        self.url, self.timeout, self.retries, self.backoff, self.model = url, timeout, retries, backoff, model
        self.send_digests, self.max_digests = send_digests, max_digests
        self._seen: OrderedDict[str, None] = OrderedDict()  # digests of media the server has features of
        self._local = threading.local()
        self._all: list = []
        self._lock = threading.Lock()

    def _grpc(self):
        c = getattr(self._local, "client", None)
        if c is None:
            import tritonclient.grpc as grpcclient

            c = self._local.client = grpcclient.InferenceServerClient(self.url)
            with self._lock:
                self._all.append(c)
        return c

    def _stream(self) -> "_Stream":
        """This thread's open stream (started on first use, and again after a failure)."""
        st = getattr(self._local, "stream", None)
        if st is None:
            st = self._local.stream = _Stream(self._grpc())
        return st

    def _drop_stream(self) -> None:
        st = getattr(self._local, "stream", None)
        self._local.stream = None
        if st is not None:
            st.stop()

    def ready(self) -> bool:
        try:
            return bool(self._grpc().is_model_ready(self.model))
        except Exception:  # noqa: BLE001  not reachable = not ready
            return False

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready():
            if time.monotonic() > deadline:
                raise ServerUnavailable(f"{self.url}: model {self.model!r} not ready after {timeout:.0f} s")
            time.sleep(0.25)

    @staticmethod
    def inputs(text: str, media_bytes: Optional[bytes] = None, end_strings: Optional[list[str]] = None,
               stream: bool = False, **settings) -> dict[str, np.ndarray]:
        """The request's tensors. settings: any input of protocol.INPUTS by name: messages (the
        conversation before text, a list or its JSON), media_type, media_path, media_digest,
        num_frames, splice_single_frame, insert_media_token and the
        SamplingSettings fields (max_tokens, min_tokens, greedy, temperature, top_k, top_p,
        repetition_penalty, seed, return_log_probs). None values are left out: the server's defaults."""
        t: dict[str, np.ndarray] = {"text_input": string_tensor(text), "stream": np.array([stream])}
        if media_bytes is not None:
            t["media_bytes_input"] = np.frombuffer(media_bytes, np.uint8)
        if end_strings:
            t["end_strings"] = string_tensor(*end_strings)
        for name, value in settings.items():
            if name not in INPUTS or name in t:
                raise TypeError(f"unknown request setting {name!r}; valid: {sorted(INPUTS)}")
            if value is None:
                continue
            if name == "messages" and not isinstance(value, str):
                value = json.dumps(value, ensure_ascii=False)
            dtype = NUMPY_DTYPES[INPUTS[name][0]]
            t[name] = string_tensor(value) if dtype is np.object_ else np.array([value], dtype=dtype)
        return t

    def answer(self, text: str, *, on_delta: Optional[Callable[[str], None]] = None, request_id: str = "",
               **kwargs) -> Answer:
        """Answer one question (kwargs: media_bytes, end_strings and the settings of `inputs`).

        on_delta: called with each text piece as it streams (the request is sent with stream=true);
            raising RequestCancelled there cancels the request on the server and is raised here.
        Raises RequestFailed (the server refused it) or ServerUnavailable (after the retries).
        """
        data = kwargs.get("media_bytes")
        if data is None or not self.send_digests or kwargs.get("media_digest") is not None:
            return self._send(self.inputs(text, stream=on_delta is not None, **kwargs), on_delta, request_id)
        digest = digest_of(data)
        if digest in self._seen:
            light = self.inputs(text, stream=on_delta is not None, **{**kwargs, "media_bytes": None, "media_digest": digest})
            try:
                return self._send(light, on_delta, request_id)
            except RequestFailed as exc:
                if MEDIA_NOT_CACHED not in str(exc):
                    raise
                with self._lock:
                    self._seen.pop(digest, None)
        result = self._send(self.inputs(text, stream=on_delta is not None, **kwargs), on_delta, request_id)
        if result.media.get("cache") in ("hit", "miss"):  # the server keeps features
            with self._lock:
                self._seen[digest] = None
                self._seen.move_to_end(digest)
                while len(self._seen) > self.max_digests:
                    self._seen.popitem(last=False)
        return result

    def _send(self, tensors: dict[str, np.ndarray], on_delta, request_id: str) -> Answer:
        delay, last = self.backoff, None
        for attempt in range(self.retries + 1):
            try:
                return self._once(tensors, on_delta, request_id)
            except (RequestFailed, RequestCancelled):
                raise
            except Exception as exc:  # noqa: BLE001  transport trouble (no answer from the model): retry
                last = exc
                if attempt < self.retries:
                    time.sleep(delay)
                    delay *= 2
                    self._reset()
        raise ServerUnavailable(f"{self.url}: no answer after {self.retries + 1} attempts: {last}")

    def _once(self, tensors: dict[str, np.ndarray], on_delta, request_id: str) -> Answer:
        import tritonclient.grpc as grpcclient
        from tritonclient.utils import np_to_triton_dtype

        inputs = []
        for name, arr in tensors.items():
            i = grpcclient.InferInput(name, list(arr.shape), "BYTES" if arr.dtype == object else np_to_triton_dtype(arr.dtype))
            i.set_data_from_numpy(arr)
            inputs.append(i)
        st = self._stream()
        done, box = st.begin(on_delta)
        try:
            st.client.async_stream_infer(self.model, inputs, request_id=request_id)
            if not done.wait(self.timeout):
                raise TimeoutError(f"no final response within {self.timeout:.0f} s")
        except BaseException:
            self._drop_stream()  # cancels what is still in flight on it
            raise
        finally:
            st.end()
        if "cancelled" in box:  # on_delta gave up: dropping the stream cancels the request on the server
            self._drop_stream()
            raise box["cancelled"]
        if "error" in box:  # the stream broke (transient), or the server refused the request
            self._drop_stream()
            err = box["error"]
            if _is_transient(err):
                raise ServerUnavailable(str(err))
            raise RequestFailed(str(err.message() if hasattr(err, "message") else err))
        return box["result"]

    def _reset(self) -> None:
        self._drop_stream()
        c = getattr(self._local, "client", None)
        if c is not None:
            try:
                c.close()
            except Exception:  # noqa: BLE001
                pass
            self._local.client = None

    def close(self) -> None:
        with self._lock:
            for c in self._all:
                try:
                    c.close()
                except Exception:  # noqa: BLE001
                    pass
            self._all.clear()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Stream:
    """One thread's open gRPC stream; its single in-flight request gets the responses."""

    def __init__(self, client):
        self.client, self._slot = client, None
        client.start_stream(callback=self._callback)  # no stream deadline: each request has its timeout

    def begin(self, on_delta) -> tuple[threading.Event, dict]:
        done, box = threading.Event(), {}
        self._slot = (done, box, on_delta)
        return done, box

    def end(self) -> None:
        self._slot = None

    def stop(self) -> None:
        try:
            self.client.stop_stream(cancel_requests=True)
        except Exception:  # noqa: BLE001  a broken stream is being discarded anyway
            pass

    def _callback(self, result, error) -> None:
        slot = self._slot
        if slot is None:  # nothing in flight (a late response after a failure): drop it
            return
        done, box, on_delta = slot
        if error is not None:
            box["error"] = error
            done.set()
            return
        final = result.as_numpy("result_json")
        if final is not None:
            box["result"] = Answer.from_dict(json.loads(final.reshape(-1)[0].decode("utf-8")))
            done.set()
        elif on_delta is not None:
            text = result.as_numpy("text_output")
            if text is not None and text.size:
                try:
                    on_delta(text.reshape(-1)[0].decode("utf-8"))
                except RequestCancelled as exc:
                    box["cancelled"] = exc
                    done.set()
