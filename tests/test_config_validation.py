"""Every model config refuses bad input at construction with one exact message naming
`<Config>.<field>` and what would be valid, and accepts every value on the valid side of each
boundary (so an off-by-one in a check fails here, not in a run hours later)."""
import pytest

from cart.models import CARTConfig, DenseConfig, RATPlusConfig, build_model, config_from_dict
from cart.models.base import ConfigBase, check_int_arg

SMALL = dict(vocab_size=61, d_model=32, head_dim=8, ffn_multiple=16)

BAD = [
    (CARTConfig, {"vocab_size": 0}, "CARTConfig.vocab_size: must be positive, got 0"),
    (CARTConfig, {"d_model": 0}, "CARTConfig.d_model: must be positive, got 0"),
    (CARTConfig, {"head_dim": 0}, "CARTConfig.head_dim: must be positive, got 0"),
    (CARTConfig, {"ffn_multiple": 0}, "CARTConfig.ffn_multiple: must be positive, got 0"),
    (CARTConfig, {"head_dim": 7, "d_model": 28}, "CARTConfig.head_dim: must be even for RoPE, got 7"),
    (CARTConfig, {"d_model": 100, "head_dim": 64}, "CARTConfig.head_dim: must divide d_model=100, got 64"),
    (CARTConfig, {"rope_theta": 0.0}, "CARTConfig.rope_theta: must be positive"),
    (DenseConfig, {"norm_eps": 0.0}, "DenseConfig.norm_eps: must be positive"),
    (CARTConfig, {"init_std": 0.0}, "CARTConfig.init_std: must be positive"),
    (CARTConfig, {"n_prelude": 0}, "CARTConfig.n_prelude: must be >= 1, got 0"),
    (CARTConfig, {"n_loops": 0}, "CARTConfig.n_loops: must be >= 1, got 0"),
    (CARTConfig, {"kv_latent_ratio": 3}, "CARTConfig.kv_latent_ratio: must divide d_model=1024, got 3"),
    (CARTConfig, {"kv_latent_ratio": 0}, "CARTConfig.kv_latent_ratio: must divide d_model=1024, got 0"),
    (CARTConfig, {"hc_window": 0}, "CARTConfig.hc_window: must be >= 1, got 0"),
    (CARTConfig, {"lti_init": 1.0}, "CARTConfig.lti_init: must be in (0, 1), got 1.0"),
    (CARTConfig, {"lti_init": 0.0}, "CARTConfig.lti_init: must be in (0, 1), got 0.0"),
    (CARTConfig, {"lie_dim": 3}, "CARTConfig.lie_dim: must be even and >= 2 (sin/cos pairs), got 3"),
    (CARTConfig, {"lie_dim": 0}, "CARTConfig.lie_dim: must be even and >= 2 (sin/cos pairs), got 0"),
    (CARTConfig, {"lie_rows": 0}, "CARTConfig.lie_rows: must be >= 1, got 0"),
    (CARTConfig, {"variant": "paper_code", "n_loops": 17},
     "CARTConfig.n_loops: 17 loops exceed the projected loop-index table's lie_rows=16 rows; use n_loops <= 16, "
     "a larger lie_rows, or lie='sinusoid'"),
    (CARTConfig, {"unfreeze_kv": True, "self_attn_core": True},
     "CARTConfig.unfreeze_kv: cannot be combined with self_attn_core (a self-attention core has no anchor)"),
    (CARTConfig, {"variant": "paper_code", "lie": "sinusoid"},
     "CARTConfig.lie: 'sinusoid' contradicts variant='paper_code', which uses 'projected'; leave it unset (null) "
     "to take the variant's value"),
    (DenseConfig, {"n_layers": 0}, "DenseConfig.n_layers: must be >= 1, got 0"),
    (RATPlusConfig, {"n_layers": 0}, "RATPlusConfig.n_layers: must be >= 1, got 0"),
    (RATPlusConfig, {"sparse_pattern": "dense"},
     "RATPlusConfig.sparse_pattern: joint training needs a sparse pattern in every layer, got 'dense'"),
    (RATPlusConfig, {"sparse_pattern": "D4,dense", "n_layers": 2},
     "RATPlusConfig.sparse_pattern: joint training needs a sparse pattern in every layer, got 'D4,dense'"),
    (RATPlusConfig, {"train_pattern": "D4"},
     "RATPlusConfig.train_pattern: is for runs without joint training (joint training runs sparse_pattern then "
     "dense), got 'D4' with joint_train=True"),
    (RATPlusConfig, {"joint_train": False, "eval_pattern": "dense,D4", "n_layers": 3},
     "RATPlusConfig.eval_pattern: 2 per-layer patterns for n_layers=3; give one pattern for all layers or exactly "
     "one per layer"),
]


@pytest.mark.parametrize("cls,kwargs,message", BAD, ids=lambda v: "-".join(v) if isinstance(v, dict) else None)
def test_bad_value_is_one_exact_message(cls, kwargs, message):
    with pytest.raises(ValueError) as e:
        cls(**kwargs)
    assert str(e.value) == message


@pytest.mark.parametrize("cls,kwargs", [
    (CARTConfig, {"n_prelude": 1, "n_loops": 1, "hc_window": 1, "lie_dim": 2, "lie_rows": 1, "kv_latent_ratio": 1}),
    (CARTConfig, {"lti_init": 1e-6}), (CARTConfig, {"lti_init": 1 - 1e-6}),
    (CARTConfig, {"variant": "paper_code", "n_loops": 16}),  # exactly the table's rows
    (CARTConfig, {"variant": "paper_code", "n_loops": 40, "disable_lie": True}),  # no table to exceed
    (CARTConfig, {"variant": "paper_code", "n_loops": 4, "lie_rows": 4}),
    (CARTConfig, {"unfreeze_kv": True}), (CARTConfig, {"self_attn_core": True}),
    (CARTConfig, {"head_dim": 2, "d_model": 2, "kv_latent_ratio": 2, "vocab_size": 1, "ffn_multiple": 1}),
    (DenseConfig, {"n_layers": 1}), (RATPlusConfig, {"n_layers": 1}),
    (DenseConfig, {"rope_theta": 0.5, "norm_eps": 1e-12, "init_std": 1e-9}),  # positive, however small
    (RATPlusConfig, {"joint_train": False, "train_pattern": "D4"}),
    (RATPlusConfig, {"n_layers": 2, "sparse_pattern": "D4,W2"}),
])
def test_values_on_the_valid_side_of_each_boundary_are_accepted(cls, kwargs):
    cfg = cls(**kwargs)
    assert all(getattr(cfg, k) == v for k, v in kwargs.items())


def test_a_bool_is_not_an_int_and_an_int_is_a_float():
    with pytest.raises(ValueError, match=r"^CARTConfig\.n_loops: "):
        CARTConfig(n_loops=True)
    with pytest.raises(ValueError, match=r"^CARTConfig\.disable_lti: "):
        CARTConfig(disable_lti=1)
    assert CARTConfig(rope_theta=500).rope_theta == 500  # an int is a valid float


@pytest.mark.parametrize("value,minimum,message", [
    (2.5, 1, "n_loops: expected an int, got 2.5"), (True, 1, "n_loops: expected an int, got True"),
    (False, 0, "n_loops: expected an int, got False"), (0, 1, "n_loops: must be >= 1, got 0"),
    (2, 3, "n_loops: must be >= 3, got 2"),
])
def test_check_int_arg_refuses(value, minimum, message):
    with pytest.raises(ValueError) as e:
        check_int_arg("n_loops", value, minimum)
    assert str(e.value) == message


def test_check_int_arg_accepts_the_minimum_and_returns_the_value():
    assert check_int_arg("n_loops", 1) == 1
    assert check_int_arg("n_loops", 0, minimum=0) == 0


def test_registry_errors_name_the_key_and_the_valid_choices():
    with pytest.raises(ValueError) as e:
        config_from_dict({"arch": "rnn"})
    assert str(e.value) == "model.arch: unknown architecture 'rnn'; valid: ['cart', 'dense', 'lrt', 'ratplus']"
    with pytest.raises(ValueError) as e:
        config_from_dict({"arch": "dense", "n_loops": 3}, where="dense run L7")
    assert str(e.value).startswith("dense run L7: unknown key(s) ['n_loops'] for arch='dense'; valid: ['d_model', ")
    with pytest.raises(TypeError) as e:
        build_model({"arch": "cart"})
    assert str(e.value) == "build_model: expected a model config of one of ['cart', 'dense', 'lrt', 'ratplus'], got dict"


def test_a_config_without_arch_is_cart():
    assert config_from_dict({"d_model": 64, "head_dim": 16}) == CARTConfig(d_model=64, head_dim=16)


@pytest.mark.parametrize("cls", [CARTConfig, DenseConfig, RATPlusConfig])
def test_derived_geometry(cls):
    cfg = cls(**SMALL)
    assert cfg.n_heads == 4
    assert cfg.ffn_hidden == 96  # 16 * ceil(int(8 * 32 / 3) / 16) = 16 * ceil(85 / 16)
    assert cfg.layer_weights == 4 * 32 * 32 + 3 * 32 * 96
    assert cls(**(SMALL | {"ffn_multiple": 85})).ffn_hidden == 85  # int(8d/3) = 85 exactly: no rounding up


# ---- runtime arguments and decode state: one exact message each ------------------------------

def _runtime_errors():
    import torch

    from cart.models.layers import DecodeCache, KVCache, LanguageModel, LatentCache
    idx = torch.randint(0, 61, (1, 4))
    cart = build_model(CARTConfig(**SMALL, n_prelude=1, n_loops=3))
    return [
        (lambda: build_model(CARTConfig(**SMALL, n_prelude=1, n_loops=3, unshare_core=True))(idx, n_loops=4),
         "n_loops=4: an unshared core has exactly 3 blocks"),
        (lambda: build_model(CARTConfig(**SMALL, n_prelude=1, n_loops=3, variant="paper_code"))(idx, n_loops=17),
         "n_loops=17: the projected loop-index embedding has 16 rows (lie_rows), one per iteration; "
         "run at most 16 loops"),
        (lambda: build_model(DenseConfig(**SMALL, n_layers=1))(idx, n_loops=2),
         "Dense: unknown argument(s) ['n_loops']; valid: ['pattern']"),
        (lambda: cart(idx, pattern="D4"),
         "CART: unknown argument(s) ['pattern']; valid: ['backprop_loops', 'exit_threshold', 'n_loops']"),
        (lambda: cart(idx, backprop_loops=0), "backprop_loops: must be >= 1, got 0"),
        (lambda: build_model(CARTConfig(**SMALL, n_prelude=1, n_loops=3, unfreeze_kv=True)).eval()(idx, exit_threshold=0.1),
         "exit_threshold: this CART's core reads every token's loop state (unfreeze_kv or self_attn_core), "
         "so tokens cannot stop looping one by one; leave it None"),
        (lambda: cart(idx, exit_threshold=0.1),  # a built model is in train mode
         "exit_threshold: adaptive exit is for inference; call model.eval() and leave backprop_loops None"),
        (lambda: cart.forward_cached(torch.randint(0, 61, (1, 5)), cart.new_cache(1, 4)),
         "decoding past max_len=4: 0 tokens seen, 5 more given"),
        (lambda: DecodeCache(2, 4, "cpu", torch.tensor([1, -1])),
         "DecodeCache: pad must be 2 non-negative counts, got tensor([ 1, -1])"),
        (lambda: DecodeCache(2, 4, "cpu", torch.tensor([1])), "DecodeCache: pad must be 2 non-negative counts, got tensor([1])"),
        (lambda: KVCache(1, 2, 4, 3, "cpu", torch.float32).append(torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 4, 4)),
         "KVCache: 4 tokens exceed the cache's max_len=3"),
        (lambda: LatentCache(1, 4, 3, "cpu", torch.float32).append(torch.zeros(1, 4, 4)),
         "LatentCache: 4 tokens exceed the cache's max_len=3"),
        (lambda: LanguageModel(ConfigBase(**SMALL))(idx, n_loops=2),  # a family without runtime arguments
         "LanguageModel: unknown argument(s) ['n_loops']; valid: none"),
        (lambda: LanguageModel(DenseConfig(**SMALL, n_layers=1)).new_cache(1, 2), "LanguageModel has no cached decoding"),
        (lambda: LanguageModel(DenseConfig(**SMALL, n_layers=1)).forward_cached(idx, None),
         "LanguageModel has no cached decoding"),
    ]


@pytest.mark.parametrize("case", range(15))
def test_runtime_misuse_is_one_exact_message(case):
    call, message = _runtime_errors()[case]
    with pytest.raises((ValueError, NotImplementedError)) as e:
        call()
    assert str(e.value) == message


def test_caches_accept_exactly_max_len_tokens():
    import torch

    from cart.models.layers import KVCache, LatentCache
    kv = KVCache(1, 2, 4, 3, "cpu", torch.float32)
    k, v = kv.append(torch.ones(1, 2, 2, 4), torch.ones(1, 2, 2, 4))
    k, v = kv.append(torch.full((1, 2, 1, 4), 2.0), torch.full((1, 2, 1, 4), 3.0))
    assert k.shape[2] == 3 and k[0, 0, :, 0].tolist() == [1.0, 1.0, 2.0] and v[0, 0, :, 0].tolist() == [1.0, 1.0, 3.0]
    assert kv.nbytes() == 2 * 2 * 3 * 4 * 4
    latent = LatentCache(1, 4, 3, "cpu", torch.float32)
    latent.append(torch.ones(1, 2, 4))
    assert latent.append(torch.full((1, 1, 4), 2.0))[0, :, 0].tolist() == [1.0, 1.0, 2.0]
    assert latent.nbytes() == 3 * 4 * 4


def test_the_base_defaults_every_family_inherits():
    cart = CARTConfig(**SMALL)
    assert cart.train_substeps() == ({},) and cart.train_passes() == 1.0
    assert DenseConfig(**SMALL).train_passes() == 1.0
    assert cart.to_dict()["arch"] == "cart" and cart.to_dict()["d_model"] == 32
    assert cart.replace(n_loops=5).n_loops == 5 and cart.n_loops == 6  # a copy; the original is unchanged
    with pytest.raises(ValueError, match=r"^CARTConfig\.n_loops: must be >= 1, got 0$"):
        cart.replace(n_loops=0)  # a replaced config is validated again
    with pytest.raises(NotImplementedError) as e:
        RATPlusConfig(**SMALL).kv_cache_values_per_token()
    assert str(e.value) == "RATPlusConfig has no cached decoding"
