"""greedyscore web demo: `python app.py` serves http://127.0.0.1:7860 on the embedded model.

Every option can also come from the environment (GREEDYSCORE_MODEL, GREEDYSCORE_BACKEND,
GREEDYSCORE_BASE_URL, GREEDYSCORE_API_KEY, GREEDYSCORE_TOKENIZER, GREEDYSCORE_FULL_VOCAB,
GREEDYSCORE_DTYPE, GREEDYSCORE_HOST, GREEDYSCORE_PORT, GREEDYSCORE_SHARE, GREEDYSCORE_AUTH,
GREEDYSCORE_MAX_NEW_TOKENS, GREEDYSCORE_MAX_QUEUE, GREEDYSCORE_CONCURRENCY, GREEDYSCORE_STORE,
GREEDYSCORE_NO_SHARE, GREEDYSCORE_SHARE_TTL, ...), so this file and
requirements.txt run as a Hugging Face Space.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    from greedyscore.engine_args import MAX_RATE, MAX_STORE_MB, MAX_TTL_DAYS, add_engine_args, env, positive_flag

    p = argparse.ArgumentParser(
        description="greedyscore web demo: chat, and see every token's true probability.",
        epilog="Each option can also be set as GREEDYSCORE_<OPTION> (e.g. GREEDYSCORE_PORT=8080).",
    )
    add_engine_args(p)
    p.add_argument("--host", default=env("HOST", "127.0.0.1"), help="default: %(default)s (0.0.0.0 to serve a LAN)")
    p.add_argument("--port", type=int, default=env("PORT", "7860"), help="default: %(default)s")
    p.add_argument("--share", action="store_true", default=env("SHARE", "") in ("1", "true", "yes"),
                   help="also open a public gradio.live link to the whole app (72 hours)")
    p.add_argument("--auth", default=env("AUTH"), metavar="USER:PASS", help="require a login")
    p.add_argument("--max-new-tokens", type=int, default=env("MAX_NEW_TOKENS", "128"),
                   help="default reply length in the UI (default: %(default)s)")
    p.add_argument("--max-queue", type=int, default=env("MAX_QUEUE", "64"),
                   help="requests waiting beyond this get 'busy, try again', in Gradio's queue and the "
                        "shared engine's (default: %(default)s)")
    p.add_argument("--concurrency", type=int, default=env("CONCURRENCY", "8"),
                   help="model requests served at once: one batch locally, in-flight HTTP requests with "
                        "--backend openai (default: %(default)s)")
    p.add_argument("--compare-model", default=env("COMPARE_MODEL"), metavar="MODEL",
                   help="a second model for the Compare tab (anything --model accepts; loaded on first use)")
    links = p.add_argument_group("share links (a Share button on every result: /?r=ID)")
    links.add_argument("--store", default=env("STORE"), metavar="PATH|URL",
                       help="where shared results are kept: a SQLite file, or postgresql://user:pass@host/db for "
                            "several app processes behind a load balancer (default: $GREEDYSCORE_CACHE/shares.db)")
    links.add_argument("--no-share", action="store_true", default=env("NO_SHARE", "") in ("1", "true", "yes"),
                       help="turn Share buttons and share links off")
    links.add_argument("--share-ttl", type=positive_flag("--share-ttl", MAX_TTL_DAYS), default=env("SHARE_TTL"),
                       metavar="DAYS", help="shared results expire after this many days (default: kept until room "
                                            "is needed)")
    links.add_argument("--share-max-mb", type=positive_flag("--share-max-mb", MAX_STORE_MB),
                       default=env("SHARE_MAX_MB", "500"), metavar="MB",
                       help="the store's total size; the oldest results go first beyond it (default: %(default)s)")
    links.add_argument("--share-rate", type=positive_flag("--share-rate", MAX_RATE, whole=True),
                       default=env("SHARE_RATE", "30"), metavar="N",
                       help="shares per client address an hour, counted in this process (default: %(default)s)")
    links.add_argument("--trusted-proxies", default=env("TRUSTED_PROXIES", ""), metavar="IPS",
                       help="comma-separated addresses (or networks, or *) of reverse proxies whose X-Forwarded-For "
                            "names the client, for the share rate limit; without it the connecting address counts "
                            "and X-Forwarded-For is ignored (default: none)")
    args = p.parse_args(argv)  # argparse applies type=int to string defaults too: bad env -> usage error
    if args.auth and ":" not in args.auth:
        p.error("--auth must be USER:PASS")
    try:
        args.trusted_proxies = trusted_proxies(args.trusted_proxies)
    except ValueError as ex:
        p.error(f"--trusted-proxies: {ex}")
    if args.max_new_tokens <= 0 or args.max_queue <= 0 or args.concurrency <= 0:
        p.error("--max-new-tokens, --max-queue and --concurrency must be positive")
    return args


def trusted_proxies(raw: str) -> str:
    """Example: trusted_proxies(" 10.0.0.1, 10.1.0.0/16 ") -> "10.0.0.1,10.1.0.0/16"; "*" trusts every peer."""
    import ipaddress

    entries = [e.strip() for e in raw.split(",") if e.strip()]
    for e in entries:
        if e != "*":
            try:
                ipaddress.ip_network(e, strict=False)
            except ValueError:
                raise ValueError(f"{e!r} is not an IP address or network (give addresses, networks or *)") from None
    return ",".join(entries)


def make_service(engine, args: argparse.Namespace):
    """The shared Service sized by the flags: --concurrency requests per batch (Gradio runs that
    many model events at once), --max-queue waiting requests before 'busy'."""
    from greedyscore.service import Service

    return Service(engine, max_batch=args.concurrency, max_pending=args.max_queue)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from greedyscore.engine_args import engine_from_args, share_store
    from greedyscore.errors import GreedyScoreError
    from greedyscore.ui import UIConfig, build_demo, launch

    try:
        store = None if args.no_share else share_store(args.store, args.share_ttl, args.share_max_mb,
                                                       int(args.share_rate))
        engine = engine_from_args(args)  # once, before the first request
    except GreedyScoreError as ex:
        print(f"greedyscore: error: {ex}", file=sys.stderr)
        return 1
    service = make_service(engine, args)
    if store is not None:  # hash the weights now, not on the first Share
        import threading

        threading.Thread(target=lambda: service.identity, name="model-identity", daemon=True).start()
    cap = max(args.max_new_tokens, min(1024, engine.info.context_length - 1))
    config = UIConfig(max_new_tokens=args.max_new_tokens, max_new_tokens_cap=cap, concurrency=args.concurrency)
    from greedyscore.variants import Variants

    variants = Variants(service, args.compare_model)
    from greedyscore.ui import Sharing

    demo = build_demo(service, config, variants=variants, sharing=Sharing(store, service))
    demo.queue(max_size=args.max_queue)
    auth = tuple(args.auth.split(":", 1)) if args.auth else None
    print(f"greedyscore: serving {engine.info.name} ({engine.info.backend}) on http://{args.host}:{args.port}",
          file=sys.stderr, flush=True)
    print(f"greedyscore: shared results in {store}" if store else "greedyscore: sharing is off", file=sys.stderr,
          flush=True)
    launch(demo, args.trusted_proxies, server_name=args.host, server_port=args.port, share=args.share, auth=auth)
    return 0


if __name__ == "__main__":
    sys.exit(main())
