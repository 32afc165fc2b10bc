"""The engine flags shared by the web demo (app.py) and the CLI: which model, where it runs; and
the share store both open."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable

from .engines import BACKENDS, Engine, load_engine, pick_backend
from .errors import BadInput, EngineUnavailable

DTYPES = ("float32", "bfloat16")
LMDEPLOY_ENGINES = ("auto", "turbomind", "pytorch")
LMDEPLOY_FLAGS = {"max_batch_size": "--max-batch-size", "session_len": "--session-len", "kv_cache": "--kv-cache",
                  "eager": "--eager"}
MAX_TTL_DAYS = 36_500.0  # the share limits' upper bounds: a hundred years, a petabyte, a share a second
MAX_STORE_MB = 1e9
MAX_RATE = 3600.0


def env(name: str, default: str | None = None) -> str | None:
    """GREEDYSCORE_<NAME> from the environment (every flag has one)."""
    return os.environ.get(f"GREEDYSCORE_{name}", default)


def add_engine_args(p: argparse.ArgumentParser) -> None:
    """--model, --backend and the remote server's flags (--base-url, --api-key, --tokenizer, --full-vocab)."""
    p.add_argument("--model", default=env("MODEL"),
                   help="local HF model dir, .gguf file or hub id (default: embedded SmolLM2-135M-Instruct); "
                        "with --backend openai, the server's model name (default: its only model)")
    p.add_argument("--backend", default=env("BACKEND", "auto"), choices=BACKENDS,
                   help="auto = lmdeploy when CUDA and lmdeploy are present, else transformers; openai = a "
                        "remote OpenAI-compatible server (vLLM, LMDeploy api_server/proxy, llama.cpp) at --base-url "
                        "(default: %(default)s)")
    p.add_argument("--dtype", default=env("DTYPE", "float32"), choices=DTYPES,
                   help="the transformers engine's weights and activations: float32 (exact scores) or bfloat16 "
                        "(faster where the CPU has bf16 instructions, refused where it has none; its scores are "
                        "approximate: |Δp| against float32 is measured at load and shown) (default: %(default)s)")
    remote = p.add_argument_group("remote server (--backend openai)")
    remote.add_argument("--base-url", default=env("BASE_URL"), metavar="URL",
                        help="the server, e.g. http://proxy:8000 or http://proxy:8000/v1")
    remote.add_argument("--api-key", default=env("API_KEY"),
                        help="sent as a Bearer token (default: $GREEDYSCORE_API_KEY; never $OPENAI_API_KEY, which "
                             "belongs to another server)")
    remote.add_argument("--tokenizer", default=env("TOKENIZER"), metavar="DIR",
                        help="the served model's tokenizer files, to read token ids exactly (default: the directory "
                             "the server loaded when it is on this machine, or the embedded model's)")
    remote.add_argument("--full-vocab", action="store_true", default=env("FULL_VOCAB", "") in ("1", "true", "yes"),
                        help="ask for the whole vocabulary's logprobs (vLLM started with --max-logprobs -1): exact "
                             "entropy instead of an interval, at a cost in speed")
    from .engines.native import help_text

    p.add_argument_group("the C kernel (--backend transformers on a CPU)", help_text())
    gpu = p.add_argument_group("LMDeploy on a CUDA GPU (--backend lmdeploy)")
    gpu.add_argument("--lmdeploy-engine", default=env("LMDEPLOY_ENGINE", "auto"), choices=LMDEPLOY_ENGINES,
                     help="auto = TurboMind when its binary loads, else the PyTorch engine (default: %(default)s)")
    gpu.add_argument("--max-batch-size", type=positive_flag("--max-batch-size", 4096, whole=True),
                     default=env("MAX_BATCH_SIZE"), metavar="N",
                     help="requests the engine decodes together (lmdeploy's default on a large GPU is 1024, with "
                          "CUDA graphs captured at a dozen sizes: minutes of start-up)")
    gpu.add_argument("--session-len", type=positive_flag("--session-len", 2**24, whole=True),
                     default=env("SESSION_LEN"), metavar="N", help="prompt + reply tokens (default: the model's)")
    gpu.add_argument("--kv-cache", type=positive_flag("--kv-cache", 1.0), default=env("KV_CACHE"), metavar="SHARE",
                     help="share of the free GPU memory for the KV cache, in (0, 1] (lmdeploy's default: 0.8)")
    gpu.add_argument("--eager", action="store_true", default=env("EAGER", "") in ("1", "true", "yes"),
                     help="the PyTorch engine without CUDA graphs: the fastest start, slower decoding")


def engine_from_args(args: argparse.Namespace) -> Engine:
    """The engine the flags name (a --base-url with the default backend: the remote one)."""
    if args.backend == "auto" and args.base_url:
        args.backend = "openai"
    dtype = getattr(args, "dtype", "float32")
    if dtype not in DTYPES:  # argparse checks choices on the command line, not on $GREEDYSCORE_DTYPE
        raise BadInput(f"unknown dtype {dtype!r} (GREEDYSCORE_DTYPE?): use one of {', '.join(DTYPES)}")
    if dtype != "float32":
        if pick_backend(args.backend) != "transformers":
            raise EngineUnavailable(f"--dtype {dtype} is for the transformers engine (--backend transformers); "
                                    "LMDeploy and remote servers choose their own precision (or leave --dtype "
                                    "at float32)")
        from .precision import load_lower_precision

        return load_lower_precision(args.model, dtype)
    chosen = pick_backend(args.backend)
    given = [flag for key, flag in LMDEPLOY_FLAGS.items() if getattr(args, key, None) not in (None, False)]
    if given and chosen != "lmdeploy":
        raise BadInput(f"{', '.join(given)} set LMDeploy's engine: add --backend lmdeploy (on a CUDA GPU), or "
                       "drop them")
    if chosen == "lmdeploy":
        return load_engine("lmdeploy", args.model, base_url=args.base_url, **_lmdeploy_load(args))
    if args.backend != "openai":
        return load_engine(args.backend, args.model, base_url=args.base_url)
    return load_engine("openai", args.model, base_url=_api_root(args.base_url), api_key=args.api_key,
                       tokenizer=args.tokenizer, full_vocab=args.full_vocab)


def _lmdeploy_load(args: argparse.Namespace) -> dict[str, object]:
    """LMDeployEngine.load's keywords from the flags."""
    engine = getattr(args, "lmdeploy_engine", "auto")
    if engine not in LMDEPLOY_ENGINES:  # $GREEDYSCORE_LMDEPLOY_ENGINE skips argparse's choices
        raise BadInput(f"unknown LMDeploy engine {engine!r} (GREEDYSCORE_LMDEPLOY_ENGINE?): use one of "
                       f"{', '.join(LMDEPLOY_ENGINES)}")
    whole = {k: int(getattr(args, k)) for k in ("max_batch_size", "session_len") if getattr(args, k, None)}
    kv = getattr(args, "kv_cache", None)
    return dict(engine=None if engine == "auto" else engine, eager_mode=bool(getattr(args, "eager", False)),
                cache_max_entry_count=float(kv) if kv else None, **whole)


def _api_root(url: str | None) -> str | None:
    """Example: _api_root("http://h:8000/v1/") -> "http://h:8000" (paths are added per call)."""
    return url.rstrip("/").removesuffix("/v1") if url else url


def positive_number(value: object, name: str, most: float = 1e9, whole: bool = False) -> float:
    """A limit as a user gives it: a number in (0, most] (whole if asked), or BadInput naming `name`."""
    kind = "a whole number" if whole else "a number"
    try:
        x = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        raise BadInput(f"{name} must be {kind} above 0, got {value!r}") from None
    if not (0 < x <= most) or (whole and x % 1):
        raise BadInput(f"{name} must be {kind} above 0 and at most {most:,g}, got {value!r}")
    return x


def positive_flag(name: str, most: float = 1e9, whole: bool = False) -> Callable[[str], float]:
    """An argparse `type=` for a limit flag (applied to a GREEDYSCORE_ default too)."""

    def parse(raw: str) -> float:
        try:
            where = f"its value (here or in GREEDYSCORE_{name[2:].upper().replace('-', '_')})"
            return positive_number(raw, where, most, whole)
        except BadInput as ex:
            raise argparse.ArgumentTypeError(str(ex)) from None

    return parse


def share_store(where: str | None = None, ttl_days: float | None = None, max_mb: float | None = None,
                per_hour: int | None = None):
    """The share store from the app's flags, else GREEDYSCORE_STORE / _SHARE_TTL / _SHARE_MAX_MB /
    _SHARE_RATE (so the CLI keeps the demo's limits); bad limits are BadInput before anything runs."""
    from .models import cache_dir
    from .sharing.store import Limits, ShareStore

    if ttl_days is None and env("SHARE_TTL"):
        ttl_days = positive_number(env("SHARE_TTL"), "GREEDYSCORE_SHARE_TTL", MAX_TTL_DAYS)
    if max_mb is None:
        max_mb = positive_number(env("SHARE_MAX_MB", "500"), "GREEDYSCORE_SHARE_MAX_MB", MAX_STORE_MB)
    if per_hour is None:
        per_hour = int(positive_number(env("SHARE_RATE", "30"), "GREEDYSCORE_SHARE_RATE", MAX_RATE, whole=True))
    limits = Limits(max_total_bytes=max(1, round(max_mb * 1e6)), ttl_s=ttl_days * 86400 if ttl_days else None,
                    per_session=int(per_hour))
    return ShareStore(where or env("STORE") or cache_dir() / "shares.db", limits)
