"""``featurebank serve``: the HTTP service (FastAPI + uvicorn), loopback by default."""

from __future__ import annotations

import sys

from featurebank.cli.embed_cmds import add_spec_arguments, feature_options_from_args
from featurebank.spec import DEFAULT_MODEL

DESCRIPTION = (
    "POST /v1/embeddings and /v1/predictions (one raw image/* body or multipart 'files'), GET "
    "/v1/models, /healthz, /readyz, /metrics. Images of concurrent requests share inference "
    "batches. With --classifier and no --model/--layer, the classifier's own spec is served "
    "(--model FILE.onnx then says where its ONNX model is). Set FEATUREBANK_API_KEY to require "
    "'Authorization: Bearer KEY'.")


def register(sub) -> None:
    p = sub.add_parser("serve", help="serve embeddings and predictions over HTTP",
                       description=DESCRIPTION)
    add_spec_arguments(p)
    p.set_defaults(model=None)  # None: the classifier's model, else efficientnet_lite0
    p.add_argument("--classifier", metavar="MODEL.joblib", help="enables /v1/predictions")
    p.add_argument("--store", metavar="STORE.h5",
                   help="answer images already in this store from it (read-only)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback only)")
    p.add_argument("--port", type=int, default=8000)
    g = p.add_argument_group("batching and limits")
    g.add_argument("--max-batch-size", type=int, default=32, help="images per inference call")
    g.add_argument("--max-wait-ms", type=float, default=5.0,
                   help="how long a batch waits for more images (default 5)")
    g.add_argument("--max-queue", type=int, default=256,
                   help="images waiting for inference before 503 (default 256)")
    g.add_argument("--max-request-mb", type=float, default=32.0, help="largest body (default 32)")
    g.add_argument("--max-images", type=int, default=64, help="images per request (default 64)")
    g.add_argument("--max-pixels", type=int, default=50_000_000, help="largest decoded image")
    g.add_argument("--timeout", type=float, default=30.0, help="seconds per request before 504")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=run_serve)


def run_serve(args) -> int:
    import os

    try:
        import uvicorn

        from featurebank.service import API_KEY_ENV, ServiceConfig, create_app
    except ModuleNotFoundError as exc:
        from featurebank.errors import FeaturebankError

        raise FeaturebankError(f"the service needs {exc.name}; install it with "
                               "pip install 'featurebank[service]'") from None
    config = ServiceConfig(
        max_batch_size=args.max_batch_size, max_wait_ms=args.max_wait_ms,
        max_queue_images=args.max_queue, max_request_bytes=int(args.max_request_mb * 2**20),
        max_images_per_request=args.max_images, max_pixels=args.max_pixels,
        request_timeout_s=args.timeout)
    if args.classifier is not None and not args.layers and (
            args.model is None or str(args.model).lower().endswith(".onnx")):
        features = None  # serve exactly what the classifier was trained on
        if args.model is not None:  # ... found by its digest in this file first
            from featurebank.export import remember_model

            remember_model(args.model)
    else:
        args.model = args.model or DEFAULT_MODEL
        features = feature_options_from_args(args)
    app = create_app(features, classifier=args.classifier, store=args.store, device=args.device,
                     threads=args.threads, config=config)
    if args.host not in ("127.0.0.1", "localhost", "::1") and not os.environ.get(API_KEY_ENV):
        print(f"warning: listening on {args.host} without an API key; set {API_KEY_ENV} to "
              "require one", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level,
                timeout_graceful_shutdown=10)
    return 0
