"""``animal-reid serve --model DIR_OR_REPO --catalogue URL``: start the re-ID service with uvicorn.

The write token comes from the ``ANIMAL_REID_TOKEN`` environment variable (never the command line, where
other users of the machine could read it). Errors: one ``error:`` line on stderr, exit 2 for bad arguments.
``--help`` needs only the base install; serving needs the ``serve`` extra, and without it the command says so in
one line (exit 1).
"""

from __future__ import annotations

import argparse
import logging
import sys

from animal_reid.extras import MissingExtraError, require_extra
from animal_reid.serve.settings import TOKEN_ENV, Limits


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="animal-reid", description="Animal re-identification tools.")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="serve a model and a catalogue over HTTP",
                       epilog=f"Writes need the bearer token in ${TOKEN_ENV}.")  # fmt: skip
    s.add_argument("--model", required=True, help="exported model directory or Hub repo id")
    s.add_argument("--catalogue", default="sqlite:///catalogue.db",
                   help="SQLAlchemy URL: sqlite:///file.db (default) or postgresql+psycopg://user@host/db")  # fmt: skip
    s.add_argument("--photos", default=None, help="photo directory (default: <sqlite file>.photos)")
    s.add_argument("--threshold", default=None, help="new-individual threshold: number or JSON file "
                   "(default: the model's open_set_threshold.json if any)")  # fmt: skip
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
    s.add_argument("-v", "--verbose", action="store_true")
    return p


def serve(args: argparse.Namespace) -> None:
    import uvicorn

    from animal_reid.serve.app import create_app
    from animal_reid.serve.service import Service

    limits = Limits(
        max_upload_bytes=int(args.max_upload_mb * 2**20), max_pixels=int(args.max_megapixels * 1e6)
    )
    service = Service.from_pretrained(
        args.model, args.catalogue, photo_dir=args.photos, threshold=args.threshold, device=args.device,
        limits=limits, max_batch=args.max_batch, max_wait_s=args.max_wait_ms / 1000, engine=args.engine,
        workers=args.workers,
    )  # fmt: skip
    if service.token is None:
        logging.getLogger(__name__).warning("%s is not set: the catalogue is read-only", TOKEN_ENV)
    try:
        uvicorn.run(
            create_app(service),
            host=args.host,
            port=args.port,
            log_level="info" if args.verbose else "warning",
            access_log=args.verbose,  # one log record per request costs the event loop CPU
        )
    finally:
        service.close()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s"
    )
    if args.max_batch < 1 or args.max_wait_ms < 0 or (args.workers is not None and args.workers < 1):
        print("error: --max-batch and --workers must be >= 1 and --max-wait-ms >= 0", file=sys.stderr)
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
