"""fissure specialise: the sweep's bookkeeping on hand-made points, and end to end on SmolLM2 (slow)."""

import json
import math

import pytest
from typer.testing import CliRunner

from fissure.cli import app
from fissure.diagnose.specialise import SpecialiseConfig, paired_change, pareto, summarise_sweep


def test_paired_change_is_the_fall_in_bits_per_byte_on_the_same_documents():
    base = [[-100.0, 50], [-300.0, 100], [-80.0, 40]]
    now = [[-90.0, 50], [-270.0, 100], [-76.0, 40]]
    change = paired_change(base, now)
    assert change["estimate"] == pytest.approx((10 + 30 + 4) / (190 * math.log(2)))
    assert change["low"] > 0  # every document improved: the paired interval is above zero


def test_pareto_keeps_the_settings_nothing_beats_on_both_axes():
    points = [{"setting_id": "a", "domain_bpb": 1.0, "mean_general_bpb": 2.0},
              {"setting_id": "b", "domain_bpb": 0.9, "mean_general_bpb": 2.2},
              {"setting_id": "c", "domain_bpb": 1.1, "mean_general_bpb": 2.1}]  # worse than a on both
    assert pareto(points) == ["a", "b"]


def test_biderman_check_says_not_testable_when_full_tuning_forgets_nothing():
    config = SpecialiseConfig(methods=["full", "lora4"], replay=[0.0], general=["code"])
    docs = lambda ll: {"legal": [[ll, 100]], "code": [[-200.0, 100]]}  # noqa: E731
    base = {"documents": docs(-100.0), "knowledge": {"accuracy": {"estimate": 0.5}}}
    points = [{"setting_id": f"{m}@replay0", "setting": m, "method": "full" if m == "full" else "lora",
               "rank": None, "replay": 0.0, "documents": docs(ll), "knowledge": {"accuracy": {"estimate": 0.5}},
               "domain_bpb": 0.0, "mean_general_bpb": 0.0} for m, ll in (("full", -80.0), ("lora4", -90.0))]
    result = summarise_sweep(config, base, points)
    (check,) = result["biderman"]
    assert check["learns_less"] and not check["testable"]
    assert any("not testable here" in line for line in result["summary"])


def test_config_errors():
    with pytest.raises(ValueError, match="lora<rank>"):
        SpecialiseConfig(methods=["qlora"])
    with pytest.raises(ValueError, match="also listed as general"):
        SpecialiseConfig(domain="code")
    result = CliRunner().invoke(app, ["specialise", "smollm2", "--domain", "topics"])
    assert result.exit_code == 2 and "labelled domain" in result.output


@pytest.mark.slow
def test_specialise_smollm2_lowers_the_domains_bits_per_byte(tmp_path):
    result = CliRunner().invoke(app, ["specialise", "smollm2", "--domain", "legal", "--general", "code,news",
                                      "--methods", "lora16", "--replay", "0", "--steps", "6", "--eval-every", "6",
                                      "--set", "eval_documents=6", "--threads", "1", "--out-dir", str(tmp_path),
                                      "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout.strip().splitlines()[-1])
    (point,) = data["points"]
    assert {"method", "rank", "replay", "step", "domain_bpb", "general_bpb"} <= set(point)
    assert (point["method"], point["rank"], point["step"]) == ("lora", 16, 6)
    assert set(point["general_bpb"]) == {"code", "news"}
    (row,) = data["rows"]
    assert point["domain_bpb"] < data["base"]["domain_bpb"] and row["gain_ci"]["low"] > 0  # a real gain
    assert (tmp_path / data["run_dir"].split("/")[-1] / "report.html").is_file()
    print(f"\nlegal bpb {data['base']['domain_bpb']:.3f} -> {point['domain_bpb']:.3f}, gain "
          f"{row['gain']:.3f} [{row['gain_ci']['low']:.3f}, {row['gain_ci']['high']:.3f}]")
