"""pipeline.bench's bookkeeping (never its timings): the sweep projection, the lever rows."""
import json

import pytest

from pipeline import bench


def _rows(rate_of, lever="base"):
    return [{"model": f"CART d{d} P6 R{r}", "lever": lever, "tokens_per_s": rate_of(d, r)}
            for d in (256, 512, 768, 1024) for r in (6, 8, 10)]


def test_sweep_projection_sums_three_seeds_of_each_config_at_its_own_rate():
    rate = lambda d, r: 1e6 * 256 / d / r  # noqa: E731
    got = bench.sweep_projection(_rows(rate) + [{"model": "Dense 7L d1024", "lever": "base", "tokens_per_s": 1.0}])
    tokens = 30_500 * 32_768
    hours = sum(3 * tokens / rate(d, r) for d in (256, 512, 768, 1024) for r in (6, 8, 10)) / 3600
    assert got["runs"] == 36 and got["tokens_per_run"] == tokens
    assert got["gpu_hours"] == pytest.approx(hours, rel=1e-12)
    assert got["gpu_hours_per_config"]["CART d1024 P6 R10"] == pytest.approx(3 * tokens / rate(1024, 10) / 3600)


def test_sweep_projection_needs_every_config_measured_at_the_base_lever():
    rows = _rows(lambda d, r: 1e5)
    assert bench.sweep_projection(rows[:-1]) is None
    # a lever's row (another step than training's) does not stand in for the base row
    assert bench.sweep_projection(rows[:-1] + _rows(lambda d, r: 1e5, lever="fp8")[-1:]) is None


def test_a_lever_whose_library_is_missing_is_one_row_saying_so(tmp_path, monkeypatch, capsys):
    import builtins
    real_import = builtins.__import__

    def no_liger(name, *a, **k):
        if name.startswith("liger_kernel"):
            raise ImportError("No module named 'liger_kernel'")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_liger)
    out = tmp_path / "b.json"
    bench.main(["--configs", "cart-d64-R2-P2", "--micro-batch", "1", "--seq-len", "16", "--vocab", "128",
                "--steps", "1", "--warmup", "0", "--compile", "off", "--device", "cpu",
                "--levers", "base", "fused_loss", "--out", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert [r["lever"] for r in rows] == ["base", "fused_loss"]
    assert rows[0]["tokens_per_s"] > 0 and "error" not in rows[0]
    assert rows[1]["error"].startswith("ImportError") and "tokens_per_s" not in rows[1]
    assert "liger_kernel" in capsys.readouterr().out
