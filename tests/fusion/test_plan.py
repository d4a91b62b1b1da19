"""The fusion model's plan (``fusion.json``'s ``config``) and the fused top-1 rule, without fitting."""

import json

import numpy as np
import pytest

from etalage.errors import ConfigError, StageOutputError
from etalage.fusion.folder import FusionDir, FusionPlan
from etalage.fusion.model import fused_top1

# a fusion.json "config" as etalage wrote it before the plan was a dataclass
OLD_CONFIG = {"run": "../run", "train": "../train.bson", "specialists": None, "specialist_names": [], "topk": 20,
              "tta": "none", "ks": [1, 8, 64], "train_stamp": {"size": 10, "mtime_ns": 5}, "lgb_params": {},
              "lgb_chosen": {"num_leaves": 7}}


def test_fused_top1_falls_back_to_the_core_where_fusion_ranked_nothing():
    topk = np.array([[4, 2], [-1, -1], [7, -1]], np.int32)
    core = np.array([1, 3, 5])
    out = fused_top1(topk, core)
    assert out.tolist() == [4, 3, 7] and out.dtype == np.int32


def test_the_plan_reads_and_writes_fusion_json_as_before(tmp_path):
    plan = FusionPlan.from_dict(OLD_CONFIG)
    assert plan.runs == ["../run"] and plan.run == "../run" and plan.ks == [1, 8, 64]
    assert json.dumps(plan.to_dict()) == json.dumps(OLD_CONFIG), "same keys, same order"
    # older files lacked the optional keys; unknown keys are kept
    plan = FusionPlan.from_dict({"run": "r", "train": "t", "topk": 10, "ks": [2], "later": 1})
    assert plan.specialist_names == [] and plan.tta == "none" and plan.to_dict()["later"] == 1
    with pytest.raises(StageOutputError, match="fusion.json: unreadable settings.*refit"):
        FusionPlan.from_dict({"run": "r", "train": "t"})


def test_several_runs_are_stored_as_a_list_and_paths_relative_to_the_folder(tmp_path):
    folder = FusionDir(tmp_path / "fusion")
    plan = FusionPlan.build(folder, [tmp_path / "a", tmp_path / "b"], tmp_path / "train.bson", None, topk=5, ks=[1])
    assert plan.to_dict()["runs"] == ["../a", "../b"] and "run" not in plan.to_dict()
    assert FusionPlan.from_dict(plan.to_dict()).runs == ["../a", "../b"]
    with pytest.raises(ConfigError, match="2 core runs"):
        _ = plan.run
    (tmp_path / "a").mkdir()
    folder.path.mkdir()
    assert folder.resolve("../a", "run", "--run") == folder.path / "../a"
    with pytest.raises(StageOutputError, match="the run it was fitted with, ../b, is not at .*; pass --run PATH"):
        folder.resolve("../b", "run", "--run")
