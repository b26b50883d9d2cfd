"""A real S3 HTTP endpoint on loopback (moto's server) that counts the requests it serves."""

import collections
import logging
import threading
from urllib.parse import unquote

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import make_server

BUCKET = "models"
PREFIX = "mme/"
HOLD_SECONDS = 60  # a held request waits at most this long
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def s3_env(s3, prefix: str = PREFIX) -> dict:
    """A server's environment for models under ``prefix`` of moto's bucket."""
    return {
        **CREDENTIALS,
        "AWS_ENDPOINT_URL_S3": s3.url,
        "MLSERVER_MME_MODEL_PREFIX": f"s3://{BUCKET}/{prefix}",
    }


def boto3_credentials(credentials: dict = CREDENTIALS) -> dict:
    """``credentials`` as boto3 client arguments."""
    return {
        "aws_access_key_id": credentials["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": credentials["AWS_SECRET_ACCESS_KEY"],
        "region_name": credentials["AWS_DEFAULT_REGION"],
    }


class CountingS3Server:
    def __init__(self):
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
        self.requests = collections.Counter()  # (method, path) -> count
        self._lock = threading.Lock()
        self._holds = {}  # (method, path) -> threading.Event that matching requests wait for
        app = DomainDispatcherApplication(create_backend_app)
        self._server = make_server("127.0.0.1", 0, self._counting(app), threaded=True, request_handler=MotoRequestHandler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def _counting(self, app):
        def counted(environ, start_response):
            key = (environ["REQUEST_METHOD"], unquote(environ.get("PATH_INFO", "")))
            with self._lock:
                self.requests[key] += 1
                gate = self._holds.get(key)
            if gate is not None and not gate.wait(HOLD_SECONDS):
                raise TimeoutError(f"{key} was held for {HOLD_SECONDS} s")
            return app(environ, start_response)

        return counted

    def hold(self, method: str, path: str) -> threading.Event:
        """Make requests of ``method`` on ``path`` wait (once counted) until the returned event is set."""
        gate = threading.Event()
        with self._lock:
            self._holds[(method, path)] = gate
        return gate

    def count(self, method: str, path: str) -> int:
        with self._lock:
            return self.requests[(method, path)]

    def total(self) -> int:
        with self._lock:
            return sum(self.requests.values())

    def start(self) -> "CountingS3Server":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
