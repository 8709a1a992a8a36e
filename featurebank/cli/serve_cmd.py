"""``featurebank serve``: the HTTP service (FastAPI + uvicorn), loopback by default."""

from __future__ import annotations

import sys

from featurebank.cli.embed_cmds import add_spec_arguments, feature_options_from_args
from featurebank.cli.flags import add_deprecated_flag, add_option_flags, options_from_args
from featurebank.service import ServiceConfig
from featurebank.spec import DEFAULT_MODEL

_DEFAULTS = ServiceConfig()
#: ServiceConfig fields whose flags are not spelt --field-name (the names users know)
_SERVICE_FLAGS = {"max_queue_images": "--max-queue", "max_images_per_request": "--max-images",
                  "request_timeout_s": "--timeout"}

DESCRIPTION = (
    "POST /v1/embeddings and /v1/predictions (one raw image/* body or multipart 'files'), GET "
    "/v1/models, /healthz, /readyz, /metrics. Images of concurrent requests share inference "
    "batches. With --classifier-file and no --model/--layer, the classifier's own spec is served "
    "(--model FILE.onnx then says where its ONNX model is). Set FEATUREBANK_API_KEY to require "
    "'Authorization: Bearer KEY'.")


def register(sub) -> None:
    p = sub.add_parser("serve", help="serve embeddings and predictions over HTTP",
                       description=DESCRIPTION)
    add_spec_arguments(p, model_help="registry name or .onnx file (default: the classifier's "
                                     f"model, else {DEFAULT_MODEL})")
    p.set_defaults(model=None)  # None: the classifier's model, else DEFAULT_MODEL
    p.add_argument("--classifier-file", metavar="CLASSIFIER",
                   help="a 'featurebank train' classifier (.joblib) or a 'featurebank finetune' "
                        "network (.onnx): enables /v1/predictions")
    add_deprecated_flag(p, "--classifier", "--classifier-file", "classifier_file",
                        metavar="CLASSIFIER")
    p.add_argument("--store", metavar="STORE.h5",
                   help="answer images already in this store from it (read-only)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback only)")
    p.add_argument("--port", type=int, default=8000, help="default: %(default)s")
    g = p.add_argument_group("batching and limits (ServiceConfig)")
    add_option_flags(g, ServiceConfig, flags=_SERVICE_FLAGS,
                     exclude=("max_request_bytes", "decode_workers", "retry_after_s"))
    g.add_argument("--max-request-mb", type=float, metavar="MB", default=_DEFAULTS.max_request_bytes / 2**20,
                   help="largest request body in MiB (413 above it; default: %(default)g)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=run_serve)


def run_serve(args) -> int:
    import os

    try:
        import uvicorn

        from featurebank.service import API_KEY_ENV, create_app
    except ModuleNotFoundError as exc:
        from featurebank.errors import FeaturebankError

        raise FeaturebankError(f"the service needs {exc.name}; install it with "
                               "pip install 'featurebank[service]'") from None
    config = options_from_args(ServiceConfig, args,
                               max_request_bytes=int(args.max_request_mb * 2**20))
    if args.classifier_file is not None and not args.layers and (
            args.model is None or str(args.model).lower().endswith(".onnx")):
        features = None  # serve exactly what the classifier was trained on
        if args.model is not None:  # ... found by its digest in this file first
            from featurebank.export import remember_model

            remember_model(args.model)
    else:
        args.model = args.model or DEFAULT_MODEL
        features = feature_options_from_args(args)
    app = create_app(features, classifier=args.classifier_file, store=args.store, device=args.device,
                     threads=args.threads, config=config)
    if args.host not in ("127.0.0.1", "localhost", "::1") and not os.environ.get(API_KEY_ENV):
        print(f"warning: listening on {args.host} without an API key; set {API_KEY_ENV} to "
              "require one", file=sys.stderr)
    # log_config=None: uvicorn's records go through the command's one log format
    # (featurebank.cli.configure_logging) instead of a format of its own
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level,
                log_config=None, timeout_graceful_shutdown=10)
    return 0
