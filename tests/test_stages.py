"""dvc.yaml's deps and params are the code's: every stage lists exactly the project files it
imports (and the model families it runs) and exactly the params keys it reads."""
import copy
import json
import shlex
import subprocess
import sys

import pytest
import yaml

from cart.code_deps import ROOT, code_closure, family_closure, training_code
from cart.data.corpus import corpus_params
from cart.data.bins import bins_params
from cart.experiments import GROUPS, describe_run, resolve_run, run_names
from cart.params import build, load_params, section, view
from cart.report import ReportSettings
from cart.results import plan_from_params
from cart.stages import stages, train_command, training_stages
from cart.data.tokenizer import tokenizer_params

DEFAULT = load_params(ROOT / "params.yaml")
DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def _dvc_stage(name: str) -> dict:
    stage = DVC[name]
    return stage["do"] if "do" in stage else stage


def _expected_lines(name: str) -> str:
    s = stages()[name]
    return (f"  {name}:\n    deps: [{', '.join(s.code())}, <data deps>]\n"
            f"    params: [{', '.join(s.params)}]  ({{variant}}: ${{key}} in a foreach, ${{item.variant}} in a matrix)")


@pytest.mark.parametrize("name", sorted(stages()))
def test_dvc_yaml_code_deps_are_the_stage_import_closure(name):
    declared = {d for d in _dvc_stage(name)["deps"] if d.endswith(".py")}
    assert declared == set(stages()[name].code()), \
        f"dvc.yaml's {name} deps differ from the code's imports; expected:\n{_expected_lines(name)}"


@pytest.mark.parametrize("name", sorted(stages()))
def test_dvc_yaml_params_are_the_stage_declared_keys(name):
    declared = [p.replace("${key}", "{variant}").replace("${item.variant}", "{variant}")
                for p in _dvc_stage(name)["params"]]
    assert declared == list(stages()[name].params), \
        f"dvc.yaml's {name} params differ from cart/stages.py; expected:\n{_expected_lines(name)}"


def test_every_dvc_stage_is_described():
    assert set(DVC) == set(stages())


def test_a_family_only_field_reaches_only_that_family():
    assert not any(k.startswith("model.cart") for k in GROUPS["dense"].params)
    assert "model.cart" in GROUPS["stage2"].params
    assert "cart/models/cart/model.py" not in stages()["dense"].code()
    assert "cart/models/dense/model.py" not in stages()["stage2"].code()
    assert "cart/models/dense/model.py" in training_code("dense") and "cart/models/cart/model.py" in training_code("cart")


_PROBE = """
import importlib, json, sys
root, plan = sys.argv[1], json.loads(sys.argv[2])
out = {}
for name, (module, models, configs) in plan.items():
    for m in [m for m in sys.modules if m.split(".")[0] in ("cart", "pipeline")]:
        del sys.modules[m]  # each stage starts from a clean slate of project modules
    importlib.import_module(module)
    if models or configs:
        from cart.models import config_class, family_modules
        for arch in models:
            for m in family_modules(arch):
                importlib.import_module(m)
        for arch in configs:
            config_class(arch)
    out[name] = sorted(m.__file__[len(root) + 1:] for m in list(sys.modules.values())
                       if (getattr(m, "__file__", None) or "").startswith(root + "/"))
print(json.dumps(out))
"""


def test_the_static_closure_covers_what_each_stage_imports():
    """What actually gets imported (the stage module, then each family it runs) is inside the closure
    the deps are built from: the AST reading misses no import."""
    plan = {n: (s.module, list(s.models), list(s.configs)) for n, s in stages().items()}
    out = subprocess.run([sys.executable, "-c", _PROBE, str(ROOT), json.dumps(plan)], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    for name, s in stages().items():
        missing = set(loaded[name]) - set(s.code())
        assert not missing, f"imported but not in {name}'s deps: {sorted(missing)}"
        assert f"{s.module.replace('.', '/')}.py" in loaded[name]


def test_closure_follows_relative_lazy_and_yaml_function_imports():
    bench = code_closure("pipeline.benchmarks")
    assert "cart/evaluation/harness.py" in bench  # a function-level `from cart.evaluation.harness import ...`
    assert "cart/evaluation/benchmarks/loaders.py" in bench  # named by a task YAML's `!function`
    assert "cart/models/base.py" in code_closure("cart.models")  # relative `from .base import`
    assert "cart/models/cart/model.py" not in code_closure("cart.models")  # families load lazily, by name
    assert set(family_closure("cart", config_only=True)) < set(family_closure("cart"))


def test_each_stage_reads_only_its_declared_params():
    """Every stage's settings build from a view holding its declared keys alone (a read of any other
    key fails with 'missing key'), and give the same result as from the full params."""
    S = stages()
    corpus_params(view(DEFAULT, S["corpus"].params))
    tokenizer_params(view(DEFAULT, S["tokenizer"].params))
    bins_params(view(DEFAULT, S["bins"].params))
    for group, names in run_names(DEFAULT).items():
        for name in names:
            keys = GROUPS[group].keys(name)
            assert resolve_run(view(DEFAULT, keys), group, name, 2048) == resolve_run(DEFAULT, group, name, 2048)
    assert plan_from_params(view(DEFAULT, S["summarize"].params)) == plan_from_params(DEFAULT)
    assert plan_from_params(view(DEFAULT, S["results"].params)) == plan_from_params(DEFAULT)
    assert "profile" in S["results"].params  # pipeline/results.py records it in the store
    from cart.evaluation.session import STUDIES, benchmark_settings, domain_sources, study_settings, variable_r_settings
    variable_r_settings(view(DEFAULT, S["variable_r"].params))
    assert domain_sources(view(DEFAULT, S["variable_r"].params)) == domain_sources(DEFAULT)
    benchmark_settings(view(DEFAULT, S["benchmarks"].params))
    for study in STUDIES:  # settings, and the run names of the groups it evaluates
        sub = view(DEFAULT, S[f"eval_{study}"].params)
        study_settings(sub, study)
        benchmark_settings(sub)
        assert run_names(sub, STUDIES[study]["groups"]) == run_names(DEFAULT, STUDIES[study]["groups"])
    build(ReportSettings, section(view(DEFAULT, S["report"].params), "report"), "report")


def test_a_view_refuses_undeclared_keys():
    with pytest.raises(ValueError, match="missing key 'stage1.grid'"):
        section(view(DEFAULT, ["stage1.run"]), "stage1.grid")


def test_describe_run_agrees_with_the_resolved_run():
    for group, names in run_names(DEFAULT).items():
        for name in names:
            d, spec = describe_run(DEFAULT, group, name), resolve_run(DEFAULT, group, name, 2048)
            model = spec.model.to_dict()
            shared = [k for k in d if k in model and k != "variant"]  # the run's variant = its ablation name
            assert {k: d[k] for k in shared} == {k: model[k] for k in shared}
            assert (d["seed"], d["variant"], d["planned_steps"]) == (spec.seed, spec.variant, spec.run.steps)


def test_code_fingerprint_follows_the_family_code(monkeypatch, tmp_path):
    import cart.training.trainer as T
    for rel in set(training_code("cart")) | set(training_code("dense")):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes((ROOT / rel).read_bytes())
    monkeypatch.setattr(T, "ROOT", tmp_path)
    cart0, dense0 = T.code_fingerprint("cart"), T.code_fingerprint("dense")
    (tmp_path / "cart/models/dense/model.py").write_text((tmp_path / "cart/models/dense/model.py").read_text() + "\n# edit\n")
    assert T.code_fingerprint("cart") == cart0 and T.code_fingerprint("dense") != dense0
    (tmp_path / "cart/training/step.py").write_text((tmp_path / "cart/training/step.py").read_text() + "\n# edit\n")
    assert T.code_fingerprint("cart") != cart0


def test_an_unknown_model_block_is_rejected():
    from cart.experiments import validate_profile
    p = copy.deepcopy(DEFAULT)
    p["model"]["crat"] = {"lti_init": 0.5}
    with pytest.raises(ValueError, match="model: unknown key.*crat"):
        validate_profile(p)


def test_the_results_store_waits_for_every_evaluation_stage():
    """pipeline/results.py reads every eval/*.tsv: each evaluation stage's rows are a dep of `results`,
    so the store is never built before them (and rebuilt when they change)."""
    tsvs = {next(iter(o)) if isinstance(o, dict) else o for s in DVC.values() for o in s.get("outs", [])}
    tsvs = {t for t in tsvs if t.startswith("eval/") and t.endswith(".tsv")}
    assert {"eval/benchmarks.tsv", "eval/variable_r.tsv", "eval/sampled_r.tsv"} <= tsvs
    missing = sorted(tsvs - set(DVC["results"]["deps"]))
    assert not missing, f"add to the results stage's deps in dvc.yaml: {missing}"


@pytest.mark.parametrize("profile", ["default", "paper"])
def test_dvc_generates_one_training_stage_per_planned_run(tmp_path, profile):
    """DVC's own expansion of dvc.yaml's foreach/matrix training stages trains exactly the runs of
    run_names, into their run folders (e.g. the paper profile's multi-seed P=4 spot check), each by
    exactly cart.stages.train_command (what bench/gpu/job.py runs where there is no DVC)."""
    from dvc.repo import Repo
    from pipeline.profile import apply_profile
    (tmp_path / "dvc.yaml").write_text((ROOT / "dvc.yaml").read_text())
    params = DEFAULT if profile == "default" else apply_profile(profile, ROOT / "params.yaml")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    repo = Repo.init(str(tmp_path), no_scm=True)
    trained = {stage.cmd: {str(o.def_path) for o in stage.outs} for stage in repo.index.stages
               if stage.name.partition("@")[0] in training_stages()}
    expected = {shlex.join(train_command(g, n)): f"runs/{g}/{n}" for g, names in run_names(params).items()
                for n in names}
    assert set(trained) == set(expected)
    assert all(expected[cmd] in outs for cmd, outs in trained.items())
    if profile == "paper":
        assert {"runs/ablation/P4-s42", "runs/ablation/P4-s137", "runs/ablation/P4-s271"} <= set(expected.values())
