"""Serving on Triton Inference Server: model repository rendering, server launch, gRPC client.

`from videoneva.serving import Client` for users' own code (see client.py).
"""


def __getattr__(name):  # the client pulls in tritonclient only when asked for
    if name in ("Client", "RequestFailed", "ServerUnavailable"):
        from videoneva.serving import client

        return getattr(client, name)
    raise AttributeError(name)
