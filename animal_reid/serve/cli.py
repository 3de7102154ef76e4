"""``animal-reid serve --model DIR_OR_REPO --catalogue URL [--reviewers FILE]``: start the re-ID service.

Who may write: the reviewers in ``--reviewers FILE`` (``name: token`` lines, re-read when the file changes; see
:mod:`animal_reid.serve.reviewers`), and the operator token in the ``ANIMAL_REID_TOKEN`` environment variable
(never the command line, where other users of the machine could read it), which writes as ``operator``. The
reviewers file is read before the model loads: one ``error:`` line when it cannot be used. Once the index is built and the port is bound, one line
``listening on http://HOST:PORT`` goes to stdout. Errors: one ``error:`` line on stderr, exit 2 for bad arguments.
``--help`` needs only the base install; serving needs the ``serve`` extra, and without it the command says so in
one line (exit 1).
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import socket
import sys

from animal_reid.extras import MissingExtraError, require_extra
from animal_reid.serve.settings import DEFAULT_POLL_MS, TOKEN_ENV, Limits


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="animal-reid", description="Animal re-identification tools.")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="serve a model and a catalogue over HTTP",
                       epilog=f"Writes need a reviewer's token (--reviewers) or the one in ${TOKEN_ENV}.")  # fmt: skip
    s.add_argument("--model", required=True, help="exported model directory or Hub repo id")
    s.add_argument("--catalogue", default="sqlite:///catalogue.db",
                   help="SQLAlchemy URL: sqlite:///file.db (default) or postgresql+psycopg://user@host/db")  # fmt: skip
    s.add_argument("--photos", default=None, help="photo directory (default: <sqlite file>.photos)")
    s.add_argument("--threshold", default=None, help="new-individual threshold: number or JSON file "
                   "(default: the model's open_set_threshold.json if any)")  # fmt: skip
    s.add_argument("--reviewers", default=None, metavar="FILE",
                   help="who may write: one 'name: token' line per reviewer (re-read when it changes)")  # fmt: skip
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    s.add_argument("--engine", default="auto", choices=("auto", "torch", "onnxruntime"))
    s.add_argument("--max-batch", type=int, default=32, help="images per model call at most")
    s.add_argument("--max-wait-ms", type=float, default=5.0, help="how long a batch waits for more images")
    s.add_argument("--workers", type=int, default=None,
                   help="batching threads, each encoding on its share of the cores (default: one per core)")  # fmt: skip
    s.add_argument("--max-upload-mb", type=float, default=20.0)
    s.add_argument("--max-megapixels", type=float, default=50.0)
    s.add_argument("--poll-ms", type=float, default=float(DEFAULT_POLL_MS),
                   help="how often to look for writes made by other replicas on the same catalogue, in ms "
                   f"(default {DEFAULT_POLL_MS}; on PostgreSQL a NOTIFY wakes them at once; 0: never)")  # fmt: skip
    s.add_argument("--refit-every", type=int, default=20, metavar="N",
                   help="refit the known/unsure/new bands after every N confirmed sightings of a species "
                   "(default 20; `animal-reid catalogue calibrate` fits them at once)")  # fmt: skip
    s.add_argument("-v", "--verbose", action="store_true")
    return p


def check_listen(host: str, port: int) -> None:
    """OSError with one line when ``host:port`` cannot be listened on (checked before the model loads; port 0,
    a free one, always can)."""
    if port == 0:
        return
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        with socket.create_server((host, port), family=family):
            pass
    except OSError as err:
        if err.errno == errno.EADDRINUSE:
            why = "the port is in use (another server? choose another --port)"
        else:  # os.strerror: create_server's own strerror repeats the address
            why = (os.strerror(err.errno) if (err.errno or 0) > 0 else err.strerror or str(err)).lower()
        raise OSError(f"cannot listen on {host}:{port}: {why}") from None


def serve(args: argparse.Namespace) -> None:
    import uvicorn

    from animal_reid.serve.app import create_app
    from animal_reid.serve.reviewers import Reviewers
    from animal_reid.serve.service import Service

    reviewers = Reviewers(args.reviewers, os.environ.get(TOKEN_ENV) or None)  # a bad file: one line, at once
    check_listen(args.host, args.port)
    limits = Limits(
        max_upload_bytes=int(args.max_upload_mb * 2**20), max_pixels=int(args.max_megapixels * 1e6)
    )
    service = Service.from_pretrained(
        args.model, args.catalogue, photo_dir=args.photos, threshold=args.threshold, device=args.device,
        reviewers=reviewers,
        limits=limits, max_batch=args.max_batch, max_wait_s=args.max_wait_ms / 1000, engine=args.engine,
        workers=args.workers, poll_s=args.poll_ms / 1000,
    )  # fmt: skip
    service.refit_every = args.refit_every  # read by the calibration (routes_admin.ensure_calibration)
    if not reviewers.enabled:
        logging.getLogger(__name__).warning(
            "no --reviewers and %s is not set: the catalogue is read-only", TOKEN_ENV
        )
    config = uvicorn.Config(
        create_app(service),
        host=args.host,
        port=args.port,
        log_level="info" if args.verbose else "warning",
        access_log=args.verbose,  # one log record per request costs the event loop CPU
    )
    try:
        _announcing_server_class()(config).run()
    finally:
        service.close()


def _listening_url(server) -> str:
    host, port = server.servers[0].sockets[0].getsockname()[:2]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


def _announcing_server_class():
    import uvicorn

    class AnnouncingServer(uvicorn.Server):
        """uvicorn's server, printing ``listening on URL`` once it is bound (after the app's startup: the
        catalogue is open and the index built), with the port actually bound (``--port 0`` picks a free one)."""

        async def startup(self, sockets=None) -> None:
            await super().startup(sockets=sockets)
            if self.started and self.servers:
                print(f"listening on {_listening_url(self)}", flush=True)

    return AnnouncingServer


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s"
    )
    if args.max_batch < 1 or args.max_wait_ms < 0 or (args.workers is not None and args.workers < 1):
        print("error: --max-batch and --workers must be >= 1 and --max-wait-ms >= 0", file=sys.stderr)
        return 2
    if args.refit_every < 1:
        print(
            f"error: --refit-every must be >= 1 confirmed sightings, got {args.refit_every}", file=sys.stderr
        )
        return 2
    if args.poll_ms < 0:
        print(
            f"error: --poll-ms must be >= 0 (0: do not follow other replicas), got {args.poll_ms:g}",
            file=sys.stderr,
        )
        return 2
    try:
        require_extra("animal-reid serve", "serve")
    except MissingExtraError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    try:
        serve(args)
    except (OSError, ValueError, ImportError) as err:
        if args.verbose:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
