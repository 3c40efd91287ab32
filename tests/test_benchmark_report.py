"""The model benchmark's report: medians, ranges and same-round JAX/PyTorch ratios."""

from benchmarks.model import TORCH_LABEL, _ratios, _table


def _rows() -> dict:
    jax_rows = [
        {"train_img_s": 1.0, "forward_img_s": 6.0},
        {"train_img_s": 1.5, "forward_img_s": 6.0},
        {"train_img_s": 2.0, "forward_img_s": 3.0},
    ]
    torch_rows = [
        {"train_img_s": 1.0, "forward_img_s": 3.0},
        {"train_img_s": 1.0, "forward_img_s": 4.0},
        {"train_img_s": 2.0, "forward_img_s": 3.0},
    ]
    return {("aggpose_l", "JAX (scan+remat)"): jax_rows, ("aggpose_l", TORCH_LABEL): torch_rows}


def test_ratios_pair_rows_of_the_same_round():
    lines = _ratios(_rows()).splitlines()
    # train: 1.0/1.0, 1.5/1.0, 2.0/2.0 -> median 1.00 (not 1.5/1.33 from medians taken apart)
    assert lines[0] == "- aggpose_l, JAX (scan+remat) / PyTorch, train step: 1.00 (1.00-1.50)x"
    assert lines[1] == "- aggpose_l, JAX (scan+remat) / PyTorch, forward: 1.50 (1.00-2.00)x"
    assert len(lines) == 2


def test_table_median_and_range_and_missing_cells():
    table = _table(_rows()).splitlines()
    assert table[2] == "| aggpose_l | JAX (scan+remat) | 6.00 (3.00-6.00) | 1.50 (1.00-2.00) | — | — |"
    single = _table({("aggpose_s", TORCH_LABEL): [{"train_img_s": 2.5, "forward_img_s": 9.0}]}).splitlines()
    assert single[2] == f"| aggpose_s | {TORCH_LABEL} | 9.00 | 2.50 | — | — |"


def test_no_ratio_without_reference():
    assert _ratios({("aggpose_l", "JAX (scan)"): [{"train_img_s": 1.0, "forward_img_s": 2.0}]}) == ""
