"""lm-evaluation-harness adapter for CART (and the Dense baseline).

    lm = CARTLM.from_run("runs/stage2/d128-R4-s42", "data/tokenizer", n_loops=8)
    results = lm_eval.simple_evaluate(model=lm, tasks=[...], task_manager=cart.evaluation.benchmarks.task_manager(...))

or `evaluate_benchmarks(lm, ...)`, which does that and returns one row per (task, metric).

The adapter is a `lm_eval.api.model.TemplateLM`: lm-eval tokenises each (context, continuation)
pair through `tok_encode` (SentencePiece) and hands the token lists to `_loglikelihood_tokens`,
which sorts them by length (longest first), runs right-padded batches (the model is causal, so
padding after a sequence cannot change it), truncates contexts from the left to `max_length`
tokens, and sums log-softmax over the continuation tokens. `loglikelihood_rolling` scores whole
documents in disjoint windows of `max_length` tokens (lm-eval's own windowing), and
`generate_until` decodes greedily. `n_loops` is passed to every forward call: CART can run any
loop count R at inference (`lm.n_loops = R` between passes, as the paper's variable-R sweep does).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import Collator
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window, simple_parse_args_string
from torch import nn
from tqdm.auto import tqdm

from ..device import autocast, resolve_device, resolve_dtype
from ..training.validation import NonFiniteEvaluation
from ..io import sha256_file
from ..models.base import check_int_arg


# ---- params: the `benchmarks` section of params.yaml --------------------------------------------

@dataclass(frozen=True)
class BenchmarkSettings:
    source: Literal["builtin", "local", "hub"]
    local_dir: str | None
    tasks: list[str]
    num_fewshot: list[int]
    limit: int | None
    batch_size: int
    max_length: int | None
    prefix_context: Literal["none", "eos", "bos"]
    fewshot_fallback: Literal["error", "eval_split"]
    bootstrap_iters: int
    device: Literal["auto", "cpu", "cuda"]
    dtype: Literal["auto", "float32", "bfloat16"]

    def __post_init__(self):
        from .benchmarks import TASKS
        bad = [t for t in self.tasks if t not in TASKS]
        if bad or not self.tasks or len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"tasks: expected distinct names from {list(TASKS)}, got {self.tasks}")
        if not self.num_fewshot or any(k < 0 for k in self.num_fewshot) or \
                len(set(self.num_fewshot)) != len(self.num_fewshot):
            raise ValueError(f"num_fewshot: expected distinct shot counts >= 0, got {self.num_fewshot}")
        if self.source == "local" and not self.local_dir:
            raise ValueError("local_dir: source 'local' needs a folder of benchmark files")
        for name in ("limit", "batch_size", "max_length"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"{name}: must be >= 1, got {v}")
        if self.max_length is not None and self.max_length < 2:
            raise ValueError(f"max_length: must be >= 2, got {self.max_length}")
        if self.bootstrap_iters < 0:
            raise ValueError(f"bootstrap_iters: must be >= 0, got {self.bootstrap_iters}")


def local_dir_of(cfg: BenchmarkSettings, root: Path) -> Path | None:
    """benchmarks.local_dir, relative paths taken from the repository root."""
    if cfg.local_dir is None:
        return None
    p = Path(cfg.local_dir).expanduser()
    return p if p.is_absolute() else root / p


# ---- tokenizer --------------------------------------------------------------------------------

class Tokenizer:
    """The project's SentencePiece tokenizer, data/tokenizer/{tokenizer.model, tokenizer.json}, read
    through cart.data.tokenizer; checks that the model file is the one tokenizer.json describes."""

    def __init__(self, tokenizer_dir: str | Path):
        from ..data.tokenizer import INFO_FILE, MODEL_FILE, load_tokenizer, tokenizer_info

        d = Path(tokenizer_dir)
        self.info = tokenizer_info(d)
        self.sp = load_tokenizer(d)
        if sha256_file(d / MODEL_FILE) != self.info["sha256"]:
            raise ValueError(f"{d / MODEL_FILE} is not the model {INFO_FILE} describes (sha256 differs); "
                             f"re-run the tokenizer stage")
        if self.sp.get_piece_size() != self.info["vocab_size"]:
            raise ValueError(f"{d}: {MODEL_FILE} has {self.sp.get_piece_size()} pieces but {INFO_FILE} says "
                             f"vocab_size {self.info['vocab_size']}; re-run the tokenizer stage")
        self.dir = d
        self.vocab_size = int(self.info["vocab_size"])
        self.sha256 = str(self.info["sha256"])
        self.bos_id = _opt_id(self.info.get("bos_id"))
        self.eos_id = _opt_id(self.info.get("eos_id"))
        if self.eos_id is None and self.bos_id is None:
            raise ValueError(f"{d}: the tokenizer has neither an EOS nor a BOS id; lm-eval needs one as "
                             f"the prefix of an empty context")

    @property
    def bytes_per_token(self) -> dict:
        return dict(self.info.get("bytes_per_token", {}))

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text)

    def decode(self, ids) -> str:
        return self.sp.decode(list(ids))


def _opt_id(i) -> int | None:
    return None if i is None or int(i) < 0 else int(i)


def check_compatible(run_cfg: dict, model_vocab: int, tok: Tokenizer, where: str) -> None:
    """Reject a checkpoint trained with another tokenizer than the one the stage uses."""
    rec = run_cfg.get("tokenizer")
    if not isinstance(rec, dict) or "sha256" not in rec:
        raise ValueError(f"{where}: the run config records no tokenizer (key 'tokenizer' with 'sha256'), so "
                         f"it cannot be checked against {tok.dir}; re-train the run with the current pipeline")
    if model_vocab != tok.vocab_size or int(rec.get("vocab_size", model_vocab)) != tok.vocab_size:
        raise ValueError(f"{where}: vocabulary mismatch: the model has {model_vocab} tokens, the run recorded "
                         f"a tokenizer of {rec.get('vocab_size')}, and {tok.dir} has {tok.vocab_size}; "
                         f"evaluate with the tokenizer the model was trained with")
    if rec["sha256"] != tok.sha256:
        raise ValueError(f"{where}: tokenizer mismatch: the run was trained with tokenizer sha256 "
                         f"{rec['sha256'][:12]}..., but {tok.dir} has {tok.sha256[:12]}...; re-run the "
                         f"tokenizer stage with the settings the run used, or retrain the run")


# ---- the adapter ------------------------------------------------------------------------------

@register_model("cart")
class CARTLM(TemplateLM):
    """lm-eval model adapter around a CART (or Dense) model and the project's SentencePiece tokenizer.

    n_loops:        loop count R for every forward pass (None: the trained R); settable between passes.
    max_length:     context window in tokens; longer inputs are truncated from the left.
    prefix_context: which token to prepend to every encoded context, so each item starts as a
                    document does in training: "none"; "eos", the document separator of data/bins
                    (`bins.document_format: eos`); or "bos", as documents start in the CART
                    authors' bins (`bos_eos`) and as lm-eval's HF adapter (0.4) encodes with a
                    Llama-2 tokenizer, whose default adds BOS (a GPT-2-style tokenizer adds
                    nothing). The prefix token (BOS for "bos", else EOS, or BOS for a tokenizer
                    without EOS) also stands for an empty context and starts loglikelihood_rolling.
    """

    backend = "causal"

    def __init__(self, model: nn.Module, tokenizer: Tokenizer, *, n_loops: int | None = None,
                 batch_size: int = 8, max_length: int = 1024, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32, prefix_context: str = "none", max_gen_toks: int = 256,
                 progress: bool = True):
        super().__init__()
        if batch_size < 1 or max_length < 2:
            raise ValueError(f"batch_size must be >= 1 and max_length >= 2, got {batch_size}, {max_length}")
        if prefix_context not in ("none", "eos", "bos"):
            raise ValueError(f"prefix_context: expected 'none', 'eos' or 'bos', got {prefix_context!r}")
        if prefix_context == "bos" and tokenizer.bos_id is None:
            raise ValueError(f"prefix_context: 'bos' needs a tokenizer with a BOS id; {tokenizer.dir} has none")
        if model.config.vocab_size != tokenizer.vocab_size:
            raise ValueError(f"model vocab_size {model.config.vocab_size} != tokenizer vocab_size "
                             f"{tokenizer.vocab_size} ({tokenizer.dir})")
        self._device = torch.device(device)
        self.model = model.to(self._device).eval()
        self.tok = tokenizer
        self.n_loops = n_loops  # checked by the setter below, before any request is scored
        self.runtime: dict = {}  # the family's other inference-time arguments (RAT+ pattern, LRT mode)
        self.batch_size = batch_size
        self.max_length = max_length
        self.dtype = dtype
        self.prefix_context = prefix_context
        self.max_gen_toks = max_gen_toks
        self.progress = progress

    @classmethod
    def from_run(cls, run_dir: str | Path, tokenizer_dir: str | Path, *, device: str | torch.device = "cpu",
                 max_length: int | None = None, **kwargs) -> "CARTLM":
        """Load runs/<group>/<name>/ and check it was trained with the tokenizer in tokenizer_dir.
        max_length None: the run's training sequence length."""
        from ..training.checkpoint import CONFIG, load_run_model, read_run_config

        run_dir = Path(run_dir)
        tok = Tokenizer(tokenizer_dir)
        run_cfg = read_run_config(run_dir)
        vocab = run_cfg.get("model", {}).get("vocab_size")
        if vocab is None:
            raise ValueError(f"{run_dir / CONFIG}: no model.vocab_size")
        check_compatible(run_cfg, int(vocab), tok, str(run_dir))
        model, _, run_cfg = load_run_model(run_dir, device)
        if max_length is None:
            max_length = run_cfg.get("run", {}).get("seq_len")
            if max_length is None:
                raise ValueError(f"{run_dir / CONFIG}: no run.seq_len; pass max_length")
        lm = cls(model, tok, device=device, max_length=int(max_length), **kwargs)
        lm.run_cfg = run_cfg
        return lm

    # -- lm-eval's command line: `--model cart --model_args checkpoint=<run dir>,n_loops=8` --
    CLI_ARGS = ("checkpoint", "tokenizer", "n_loops", "max_length", "prefix_context", "dtype", "max_gen_toks")

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> "CARTLM":
        return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict, additional_config: dict | None = None) -> "CARTLM":
        """Build the adapter from lm-eval's --model_args (CLI_ARGS; `checkpoint` a run directory,
        `tokenizer` its tokenizer folder, default data/tokenizer) and --batch_size / --device."""
        args = dict(arg_dict)
        unknown = sorted(set(args) - set(cls.CLI_ARGS))
        if unknown:
            raise ValueError(f"--model cart: unknown model_args {unknown}; valid: {list(cls.CLI_ARGS)}")
        if "checkpoint" not in args:
            raise ValueError("--model cart: model_args need checkpoint=<run dir> (runs/<group>/<name>)")
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None}
        batch_size = extra.get("batch_size", 8)
        if not str(batch_size).isdigit():
            raise ValueError(f"--batch_size: the cart adapter needs a number, got {batch_size!r}")
        device = str(extra.get("device") or "auto")
        if device.startswith("cuda") and not torch.cuda.is_available():  # lm-eval's default is cuda:0
            logging.getLogger(__name__).warning("--device %s: no CUDA device here, running on cpu", device)
            device = "cpu"
        device = resolve_device("auto") if device == "auto" else torch.device(device)
        dtype = resolve_dtype(str(args.pop("dtype", "auto")), device, "--model cart: model_args dtype")
        return cls.from_run(args.pop("checkpoint"), args.pop("tokenizer", "data/tokenizer"), device=device,
                            dtype=dtype, batch_size=int(batch_size), **args)

    # -- TemplateLM interface --
    @property
    def eot_token_id(self) -> int:
        return self.tok.eos_id if self.tok.eos_id is not None else self.tok.bos_id

    @property
    def prefix_token_id(self) -> int:
        if self.prefix_context == "bos" or self.tok.eos_id is None:
            return self.tok.bos_id
        return self.tok.eos_id

    @property
    def tokenizer_name(self) -> str:
        return f"cart-sentencepiece-{self.tok.sha256[:12]}"

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        ids = self.tok.encode(string)
        prefix = self.prefix_context != "none" if add_special_tokens is None else add_special_tokens
        if prefix and (not ids or ids[0] != self.prefix_token_id):
            ids = [self.prefix_token_id] + ids
        return ids

    def tok_decode(self, tokens) -> str:
        return self.tok.decode(tokens)

    @property
    def n_loops(self) -> int | None:
        return self._n_loops

    @n_loops.setter
    def n_loops(self, value: int | None) -> None:
        """R of every forward pass (None: the trained R); lm-eval's model_args arrive parsed, so
        `n_loops=2.5` is a float here: refused now, naming the argument, not deep inside torch."""
        if value is not None:
            if "n_loops" not in self.model.config.runtime_kwargs():
                raise ValueError(f"n_loops: {type(self.model).__name__} has no loop count; leave n_loops unset")
            check_int_arg("n_loops", value)
        self._n_loops = value

    @property
    def trained_n_loops(self) -> int | None:
        return getattr(self.model.config, "n_loops", None)

    @torch.no_grad()
    def _model_call(self, inps: torch.Tensor) -> torch.Tensor:
        kwargs = dict(self.runtime) | ({} if self.n_loops is None else {"n_loops": self.n_loops})
        with autocast(self._device, self.dtype):
            logits = self.model(inps, **kwargs).float()
        # NaN logits still give an argmax, so an accuracy would come out a plausible number
        if not bool(torch.isfinite(logits).all()):
            r = self._r_label()
            setting = ", ".join([*(f"{k}={v}" for k, v in self.runtime.items()), *([f"R={r}"] if r else [])])
            raise NonFiniteEvaluation(f"the model's logits are not finite{f' ({setting})' if setting else ''}: its "
                                      f"weights, or its forward at this setting, are not finite")
        return logits

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        """requests: [((context, continuation), context_tokens, continuation_tokens)] ->
        [(sum of log p(continuation tokens), whether greedy decoding yields the continuation)]."""
        coll = Collator(requests, sort_fn=lambda r: (-len(r[1] + r[2]), tuple(r[1] + r[2])))
        res = []
        bar = tqdm(total=len(requests), desc=f"loglikelihood (R={self._r_label()})",
                   disable=disable_tqdm or not self.progress, leave=False)
        for chunk in coll.get_batched(n=self.batch_size):
            inps, spans = [], []
            for _, ctx, cont in chunk:
                if not ctx or not cont:
                    raise ValueError("loglikelihood: empty context or continuation tokens")
                if len(cont) > self.max_length:
                    raise ValueError(f"loglikelihood: continuation of {len(cont)} tokens exceeds "
                                     f"max_length={self.max_length}")
                # the last max_length+1 tokens, minus the final one (it is only ever a target)
                inp = (ctx + cont)[-(self.max_length + 1):][:-1]
                inps.append(inp)
                spans.append((len(inp), cont))
            width = max(len(x) for x in inps)
            batch = torch.zeros(len(inps), width, dtype=torch.long)  # right padding (any id: causal model)
            for i, x in enumerate(inps):
                batch[i, :len(x)] = torch.tensor(x, dtype=torch.long)
            logp = F.log_softmax(self._model_call(batch.to(self._device)), dim=-1)
            for i, (inplen, cont) in enumerate(spans):
                lp = logp[i, inplen - len(cont):inplen]  # positions predicting the continuation
                target = torch.tensor(cont, dtype=torch.long, device=lp.device)
                greedy = bool((lp.argmax(dim=-1) == target).all())
                total = float(lp.gather(-1, target[:, None]).sum())
                res.append((total, greedy))
                bar.update(1)
        bar.close()
        out = coll.get_original(res)
        for (req, _, _), r in zip(requests, out):
            if req is not None and req[0] is not None:
                self.cache_hook.add_partial("loglikelihood", req, r)
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """log p(whole string | prefix token), in disjoint windows of max_length tokens."""
        windows, owner = [], []
        for i, (string,) in enumerate(req.args for req in requests):
            for ctx, cont in map(make_disjoint_window, get_rolling_token_windows(
                    token_list=self.tok_encode(string, add_special_tokens=False), prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length, context_len=1)):
                windows.append((None, ctx, cont))
                owner.append(i)
        scores = self._loglikelihood_tokens(windows, disable_tqdm=disable_tqdm)
        totals = [0.0] * len(requests)
        for i, (ll, _) in zip(owner, scores):
            totals[i] += ll
        for req, t in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", (req.args[0],), t)
        return totals

    @torch.no_grad()
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy decoding (no KV cache: the window is re-run per token) until a stop string,
        EOS or max_gen_toks."""
        out = []
        for req in tqdm(requests, desc="generate_until", disable=disable_tqdm or not self.progress, leave=False):
            context, gen_kwargs = req.args
            gen_kwargs = dict(gen_kwargs or {})
            if gen_kwargs.get("do_sample") and float(gen_kwargs.get("temperature", 1.0)) > 0:
                raise ValueError("CARTLM.generate_until: only greedy decoding is supported (do_sample=False)")
            until = gen_kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(gen_kwargs.get("max_gen_toks", gen_kwargs.get("max_new_tokens", self.max_gen_toks)))
            ids = self.tok_encode(context) if context else [self.prefix_token_id]
            new: list[int] = []
            text = ""
            for _ in range(max_new):
                window = (ids + new)[-self.max_length:]
                logits = self._model_call(torch.tensor([window], device=self._device))[0, -1]
                nxt = int(logits.argmax())
                if nxt == self.tok.eos_id:
                    break
                new.append(nxt)
                text = self.tok_decode(new)
                if any(s and s in text for s in until):
                    break
            for s in until:
                if s:
                    text = text.split(s)[0]
            out.append(text)
            self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
        return out

    def _r_label(self):
        return self.n_loops if self.n_loops is not None else self.trained_n_loops


# ---- running benchmarks -----------------------------------------------------------------------

def quiet_lm_eval() -> None:
    """lm-eval logs every task's setup at INFO and a custom-dataset hint at WARNING, and datasets
    draws a bar per split: keep errors only (the stages draw their own progress bars)."""
    import datasets

    for name in ("lm_eval", "lm-eval"):
        logging.getLogger(name).setLevel(logging.ERROR)
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()


def _cache_env_info() -> None:
    """simple_evaluate records the environment (torch's collect_env: several subprocesses, 1-7 s)
    on every call; the variable-R sweep calls it once per R. Collect it once per process instead:
    the results still carry it."""
    import lm_eval.evaluator as ev

    fn = getattr(ev, "add_env_info", None)
    if fn is None or getattr(fn, "_cart_cached", False):
        return
    cache: dict = {}

    def add_env_info(storage: dict) -> None:
        if not cache:
            fn(cache)
        storage.update(cache)

    add_env_info._cart_cached = True
    ev.add_env_info = add_env_info


def evaluate_benchmarks(lm: CARTLM, tasks, *, source: str, local_dir=None, num_fewshot: int = 0,
                        limit: int | None = None, bootstrap_iters: int = 100_000,
                        fewshot_fallback: str = "error", task_manager=None, log_samples: bool = False):
    """Run `tasks` (canonical names: hellaswag, arc_challenge, lambada_openai, piqa) through
    lm_eval.simple_evaluate. Returns (rows, raw results); each row is
    {"task", "metric", "value", "stderr"} for the metrics in cart.evaluation.benchmarks.METRICS."""
    import lm_eval

    from . import benchmarks as B

    _cache_env_info()
    specs = B.task_specs(tasks, source, local_dir, num_fewshot, fewshot_fallback)
    tm = task_manager or B.task_manager(source, local_dir)
    try:
        results = lm_eval.simple_evaluate(
            model=lm, tasks=specs, num_fewshot=num_fewshot, limit=limit, task_manager=tm,
            bootstrap_iters=bootstrap_iters, log_samples=log_samples)
    except ConnectionError as e:
        if source != "hub":
            raise
        raise ConnectionError(f"{e}. benchmarks.source 'hub' reads the hub datasets of lm-eval's built-in tasks: "
                              f"they must be in the Hugging Face cache, or run with HF_DATASETS_OFFLINE=0 "
                              f"HF_HUB_OFFLINE=0 and network; offline, use source 'local'") from e
    rows = []
    for task in tasks:
        name = B.harness_name(task, source)
        got = results["results"].get(name)
        if got is None:
            raise RuntimeError(f"lm-eval returned no results for {name}; got {sorted(results['results'])}")
        for metric in B.METRICS[task]:
            key = f"{metric},none"
            if key not in got:
                raise RuntimeError(f"lm-eval results for {name} lack {key!r}: {sorted(got)}")
            err = got.get(f"{metric}_stderr,none")
            rows.append({"task": task, "metric": metric, "value": float(got[key]),
                         "stderr": float(err) if isinstance(err, (int, float)) and math.isfinite(err) else None})
    return rows, results
