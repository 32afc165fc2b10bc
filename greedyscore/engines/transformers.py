"""Hugging Face transformers engine: CPU in float32, or CUDA.

Single pass: our own decode loop (`engines/decode.py`) over the model's forward scores each
step from the raw logits it chose the token from, so no [steps, vocab] tensor is stored and no
second forward runs. Verification rescoring reuses the prompt's KV cache.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any

import torch

from ..cpu import in_a_thread_of_its_own
from ..errors import BadInput, EngineUnavailable, ModelNotFound
from ..models import resolve_model
from ..scoring import CHUNK_ROWS, StepScores, empty_scores, score_chunks
from .base import EngineInfo, GenerateRequest, Generation
from .decode import DecodeBatch, generate_all
from .hf_text import HFTokenizer
from .layout import cpu_layout

SCORE_CHUNK_TOKENS = 64  # teacher forcing feeds this many tokens per forward: [64, vocab] logits at most


PRECISIONS = ("float32", "bfloat16", "int8")


MIN_TRANSFORMERS = "5.24"  # requirements-common.txt's floor


def check_transformers() -> None:
    """Refuse a transformers older than MIN_TRANSFORMERS: this engine passes its KV cache as
    `cache=`, which older releases (`past_key_values=`) take into **kwargs and ignore, so every
    cached step would be scored without its context, silently (5.17: log-probs off by up to 12)."""
    import transformers
    from packaging.version import Version

    found = transformers.__version__
    if Version(found) < Version(MIN_TRANSFORMERS):
        raise EngineUnavailable(f"the transformers engine needs transformers >= {MIN_TRANSFORMERS}, found {found}: "
                                f"pip install 'transformers>={MIN_TRANSFORMERS},<6'")


class TransformersEngine:
    def __init__(self, model: Any, tokenizer: Any, model_name: str, **loaded: Any) -> None:
        """`tokenizer`: the model's Hugging Face tokenizer; `loaded`: the EngineInfo fields that
        loading knows besides the model's own (source, precision, layout, score_source, drift)."""
        self.model = model
        self.tokenizer = HFTokenizer(tokenizer)
        self.device = next(model.parameters()).device
        cfg = model.config
        stop = set()
        for src in (model.generation_config.eos_token_id, tokenizer.eos_token_id):
            if src is not None:
                stop.update(src if isinstance(src, list) else [src])
        stop_ids = frozenset(int(s) for s in stop)
        self.info = replace(EngineInfo(
            name=model_name, backend="transformers", score_source=_logits_source(model), stop_ids=stop_ids,
            context_length=int(getattr(cfg, "max_position_embeddings", 0) or tokenizer.model_max_length),
            vocab_size=min(len(tokenizer), int(cfg.vocab_size)),
        ), **loaded)  # not concurrent: one thread owns the model, the service batches for it
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(stop_ids)
        # generate() fills unset options from the model's generation_config: keep only the special
        # ids, so no repetition penalty, min length or n-gram ban from a model's defaults ever
        # touches the logits. Greedy is then the argmax of the raw logits, and so are the scores.
        from transformers import GenerationConfig

        model.generation_config = GenerationConfig(
            bos_token_id=model.generation_config.bos_token_id, eos_token_id=sorted(stop_ids), pad_token_id=self.pad_id,
        )

    @classmethod
    @in_a_thread_of_its_own  # no OpenMP pool left in the caller's thread: decoding's stays unthrottled (cpu.py)
    def load(cls, model: str | None = None, device: str | None = None, precision: str = "float32",
             drift: bool = False, **_: Any) -> TransformersEngine:
        """Load once: resolve/convert the model, then from_pretrained (float32 on CPU by default).

        precision: "float32", "bfloat16", or "int8" (torch's dynamic quantisation of the linear
        layers, CPU: int8 weights, float32 activations): to see what lower precision does to the
        model's confidence (the Compare tab). drift: also measure a lower precision's distance
        from float32 (`precision.drift_from_float32`; --dtype), into the info and its score source.
        """
        from transformers import AutoModelForCausalLM, AutoTokenizer

        check_transformers()
        if precision not in PRECISIONS:
            raise BadInput(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")
        name, source = resolve_model(model)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if precision == "int8" and device != "cpu":
            raise EngineUnavailable("int8 dynamic quantisation runs on the CPU only")
        t0 = time.perf_counter()
        print(f"greedyscore: loading {name} ({precision}) on {device} ...", file=sys.stderr, flush=True)
        dtype = torch.bfloat16 if precision == "bfloat16" else torch.float32
        try:
            tok = AutoTokenizer.from_pretrained(source)
            lm = AutoModelForCausalLM.from_pretrained(source, dtype=dtype).to(device).eval()
        except OSError as ex:
            raise ModelNotFound(f"could not load model {model!r}: {ex}".splitlines()[0]) from ex
        if precision == "int8":
            import warnings

            from torch.ao.quantization import quantize_dynamic

            with warnings.catch_warnings():  # deprecated for torchao, still in the pinned torch 2.13
                warnings.simplefilter("ignore")
                lm = quantize_dynamic(lm, {torch.nn.Linear}, dtype=torch.qint8)
        layout = cpu_layout(lm, precision) if device == "cpu" else "as loaded"  # ~1.6x decoding (engines/layout.py)
        print(f"greedyscore: {name} loaded in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
        loaded = dict(source=source, precision=precision, layout=layout,
                      score_source=_score_source(lm, device, precision, layout))
        engine = cls(lm, tok, name, **loaded)
        if not drift or precision == "float32":
            return engine
        from ..precision import drift_from_float32

        return cls(lm, tok, name, **loaded, drift=drift_from_float32(engine, device))

    # --- generation and scoring ----------------------------------------------------------
    def generate_batch(self, requests: Sequence[GenerateRequest]) -> list[Generation]:
        """Greedy decoding of several prompts at once through our own decode loop
        (`engines/decode.py`): each row stops at its stop id, its own max_new_tokens or the step
        its cancel is seen, and leaves the batch then; scores come from the same raw logits."""
        return generate_all(self.model, self.info.stop_ids, requests)

    def decoder(self, max_rows: int = 16) -> DecodeBatch:
        """A batch that requests join and leave at any step: the scheduler's continuous batching."""
        return DecodeBatch(self.model, self.info.stop_ids)

    def score_ids(
        self, context_ids: Sequence[int], target_ids: Sequence[int], top_k: int, cache: Any = None
    ) -> StepScores:
        """Teacher-forced scores of target_ids given context_ids: the rows of context + target[:-1]
        from the context's last position (`cache`, the prompt's KV cache, saves its prefill)."""
        if not context_ids:
            raise ValueError("teacher forcing needs at least one context token")
        if not target_ids:
            return empty_scores(top_k)
        ids = [*context_ids, *target_ids[:-1]]
        return score_chunks(self.logits(ids, len(context_ids) - 1, cache), torch.tensor(list(target_ids)), top_k)

    @torch.inference_mode()
    def logits(self, ids: Sequence[int], start: int, cache: Any = None) -> Iterator[torch.Tensor]:
        """Raw logits at positions start .. len(ids) - 1 (row j predicts the token after ids[start + j]),
        in chunks of rows: ids[:start] is prefilled keeping no logits (or taken from `cache`, cropped
        to it), the rest fed SCORE_CHUNK_TOKENS at a time, so no [len, vocab] tensor is ever held."""
        if not 0 <= start < len(ids):
            raise ValueError(f"start {start} is not a position of {len(ids)} ids")
        from transformers import DynamicCache

        if cache is not None:
            extra = cache.get_seq_length() - start
            if extra > 0:
                try:
                    cache.crop(-extra)  # keep the first `start` positions
                except (ValueError, NotImplementedError):  # e.g. sliding-window layers
                    cache = None
            elif extra < 0:
                cache = None
        if cache is None:
            cache = DynamicCache(config=self.model.config)
            if start > 0:
                self.model(input_ids=torch.tensor([list(ids[:start])], device=self.device), cache=cache,
                           use_cache=True, logits_to_keep=1)
        for i in range(start, len(ids), SCORE_CHUNK_TOKENS):
            part = torch.tensor([list(ids[i : i + SCORE_CHUNK_TOKENS])], device=self.device)
            yield from self.model(input_ids=part, cache=cache, use_cache=True).logits[0].split(CHUNK_ROWS)


def _logits_source(model: Any) -> str:
    """What a score comes from on a model as loaded: its logits' dtype and device."""
    param = next(model.parameters())
    return f"{str(param.dtype).removeprefix('torch.')} logits ({param.device.type}), softmax in float32"


def _score_source(model: Any, device: str, precision: str, layout: str) -> str:
    """The score source of a loaded model: the precision's arithmetic and, on a CPU, whether the C kernel runs."""
    source = _logits_source(model)
    if precision == "int8":
        source = "int8 dynamic-quantised linear layers, float32 logits (cpu), softmax in float32"
    elif precision == "bfloat16" and layout == "native":  # the C decode step: bf16 weights, float32 arithmetic
        source = ("bfloat16 weights (cpu): prompts in bfloat16, each new token's step in float32 arithmetic, "
                  "softmax in float32")
    if device == "cpu" and precision in ("float32", "bfloat16"):  # whether the C kernel runs, and why
        from .native import decision

        source += f"; {decision(precision).note()}"
    return source
