"""The evaluation arithmetic against independent computations: eval_loss is the mean next-token
cross-entropy in nats over the scored targets, PPL = exp(loss), BPB = loss / ln 2 * tokens / bytes;
and a trained run's final evaluation is the cross-entropy recomputed from its saved weights on its
validation batches."""
import json
import math

import pytest
import safetensors.torch
import torch
import torch.nn.functional as F

from cart.training.validation import bits_per_byte, eval_loss, perplexity
from cart.models import CARTConfig, build_model, config_from_dict
from cart.models.base import IGNORE_INDEX

V = 50
# fp32 logits, a sum of at most 2 x 32 token losses per batch: relative rounding below 64 * 2^-24 ~ 4e-6
FP32_SUM_REL = 1e-5


def nats_by_hand(model, batches) -> tuple[float, int]:
    """Mean -log p(target) over every target that is not IGNORE_INDEX, in float64, batch sizes and
    ignored counts pooled (a mean over tokens, not a mean of batch means)."""
    total, count = 0.0, 0
    with torch.no_grad():
        for x, y in batches:
            logp = torch.log_softmax(model(x).double(), dim=-1)
            scored = y != IGNORE_INDEX
            total -= float(logp[scored].gather(-1, y[scored][:, None]).sum())
            count += int(scored.sum())
    return total / count, count


def test_eval_loss_is_the_mean_cross_entropy_in_nats_over_scored_targets():
    torch.manual_seed(0)
    model = build_model(CARTConfig(vocab_size=V, d_model=32, head_dim=16, n_prelude=1, n_loops=2)).eval()
    with torch.no_grad():
        for p in model.parameters():  # far from uniform, so the loss is not ~ln V whatever the arithmetic
            p.add_(torch.randn_like(p) * 0.3)
    g = torch.Generator().manual_seed(1)
    batches = []
    for rows, ignored in ((2, 0), (1, 5), (3, 9)):  # unequal batches and ignored counts: means of means would differ
        x, y = torch.randint(0, V, (rows, 12), generator=g), torch.randint(0, V, (rows, 12), generator=g)
        y.view(-1)[torch.randperm(y.numel(), generator=g)[:ignored]] = IGNORE_INDEX
        batches.append((x, y))
    loss, count = eval_loss(model, batches)
    want, want_count = nats_by_hand(model, batches)
    assert count == want_count == 6 * 12 - 14
    assert loss == pytest.approx(want, rel=FP32_SUM_REL)
    with torch.no_grad():  # and F.cross_entropy's own reading of the same batches
        ce = torch.cat([F.cross_entropy(model(x).transpose(1, 2), y, ignore_index=IGNORE_INDEX, reduction="none")
                        .flatten() for x, y in batches])
    assert loss == pytest.approx(float(ce.sum()) / count, rel=FP32_SUM_REL)


@pytest.mark.parametrize("loss", [0.01, 1.0, 3.2188758248682006, 10.5])
def test_perplexity_is_exp_of_the_loss_in_nats(loss):
    assert perplexity(loss) == math.exp(loss)


@pytest.mark.parametrize("loss,tokens,n_bytes", [(3.0, 1000, 4100), (0.5, 7, 30), (5.25, 64, 64)])
def test_bits_per_byte_is_the_total_bits_over_the_total_bytes(loss, tokens, n_bytes):
    total_bits = loss * tokens / math.log(2)
    assert bits_per_byte(loss, n_bytes / tokens) == pytest.approx(total_bits / n_bytes, rel=1e-12)
    assert bits_per_byte(loss, n_bytes / tokens) == pytest.approx(math.log2(perplexity(loss)) * tokens / n_bytes,
                                                                  rel=1e-12)


def test_a_runs_final_evaluation_is_the_cross_entropy_of_its_saved_weights(tiny_project):
    """Trained here, then the summary's final loss per domain recomputed by hand from model.safetensors
    on the validation batches the run evaluates (data.val_batches at its seq_len, eval_seqs, micro_batch,
    val_windows)."""
    from cart.data.bins import domains, val_batches
    from cart.experiments import RunPaths
    from cart.data.tokenizer import tokenizer_info
    from cart.training.trainer import train_run
    from conftest import run_spec
    spec = run_spec()
    paths = RunPaths.for_run(spec.group, spec.name)
    summary = train_run(spec, paths, progress=False)
    config = json.loads((paths.run_dir / "config.json").read_text())
    model = build_model(config_from_dict(config["model"])).eval()
    model.load_state_dict(safetensors.torch.load_file(str(paths.run_dir / "model.safetensors")))
    bytes_per_token = tokenizer_info(paths.tokenizer_dir)["bytes_per_token"]
    metrics = json.loads(paths.metrics_file.read_text())
    r = spec.run
    assert list(summary["final_eval"]) == domains(paths.bins_dir)
    for dom, got in summary["final_eval"].items():
        batches = val_batches(paths.bins_dir, dom, r.seq_len, spec.train.eval_seqs, r.micro_batch,
                              spec.train.val_windows)
        loss, _ = nats_by_hand(model, batches)
        assert got["loss"] == pytest.approx(loss, rel=FP32_SUM_REL), dom
        assert got["ppl"] == math.exp(got["loss"])
        assert got["bpb"] == pytest.approx(got["loss"] / math.log(2) / bytes_per_token[dom], rel=1e-12)
        assert (metrics[f"loss_{dom}"], metrics[f"ppl_{dom}"], metrics[f"bpb_{dom}"]) == \
            (got["loss"], got["ppl"], got["bpb"])
