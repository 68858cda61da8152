"""buildlog_client: download CodeArts Build action logs from buildlog.

::

    from buildlog_client import Client, BuildLogError

    with Client("localhost:9090", token="...") as client:
        stream = client.download("3f2a9c1e-7b4d-4e8a-9c6f-1d2e3f4a5b6c", "stage1")
        with open(stream.file_name, "wb") as f:
            stream.write_to(f)

:meth:`Client.download` and :meth:`Client.follow` return a
:class:`LogStream`, an iterator of ``bytes`` that resumes by itself after
the endings the server means to be resumed, checks that the bytes are
contiguous and complete, and raises :class:`BuildLogError` for every other
ending. The generated protobuf and gRPC modules of the API ship beside this
package as ``buildlog.v1.buildlog_pb2`` and ``buildlog.v1.buildlog_pb2_grpc``.
"""

from ._client import (DEFAULT_MAX_BACKOFF, DEFAULT_MAX_RETRIES, DEFAULT_MIN_BACKOFF,
                      LOG_KEY_METADATA_KEY, TOKEN_METADATA_KEY, ActionState, Client,
                      LogLevel, LogMetadata, LogStream, Reconnect, log_key)
from ._errors import CLIENT_DOMAIN, PROTOCOL_ERROR, BuildLogError, retryable

__version__ = "0.1.0"

__all__ = [
    "Client", "LogStream", "LogLevel", "LogMetadata", "ActionState", "Reconnect",
    "BuildLogError", "retryable", "log_key",
    "DEFAULT_MAX_RETRIES", "DEFAULT_MIN_BACKOFF", "DEFAULT_MAX_BACKOFF",
    "TOKEN_METADATA_KEY", "LOG_KEY_METADATA_KEY", "PROTOCOL_ERROR", "CLIENT_DOMAIN",
]
