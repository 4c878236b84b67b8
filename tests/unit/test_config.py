from pathlib import Path

import pytest

from megaclass.train.config import RunConfig, from_dict, load_config, to_toml

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib


def test_defaults_file_and_overrides_compose(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('name = "mine"\n[train]\nsteps = 7\n[head]\nmargin = "arcface"\n')
    config = load_config(str(path), ["train.steps=9", "optim.lr=1", "data.source=synthetic"])
    assert config.name == "mine" and config.train.steps == 9 and config.head.margin == "arcface"
    assert config.optim.lr == 1.0 and isinstance(config.optim.lr, float)


def test_resolved_config_round_trips_through_toml():
    config = load_config(None, ["head.scale=16", "data.path='a \"quoted\" path'"])
    assert from_dict(RunConfig, tomllib.loads(to_toml(config))) == config


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.stepz=1"], "unknown config key train.stepz; allowed in \\[train\\]"),
        (["bogus=1"], "unknown config key bogus"),
        (["train.steps=1.5"], "train.steps must be int"),
        (["train.steps=true"], "train.steps must be int"),
        (["head.matmul_dtype=fp16"], "head.matmul_dtype must be one of fp32, bf16"),
        (["data.source=features"], "data.path is required"),
        (["train=3"], "train must be a section"),
        (["optim.momentum=1.0"], "optim.momentum must be in"),
        (["steps"], "--set expects key=value"),
        (["head.sampler=hnsw"], "head.sampler must be one of full, random, knn"),
        (["head.sampler=random", "head.budget=5000"], "head.budget must be in \\(0, 1\\]"),
        (["head.budget=0"], "head.budget must be > 0"),
        (["head.graph_build=lsh"], "head.graph_build must be one of auto, exact, ivf"),
        (["optim.head_optimizer=adam"], "optim.head_optimizer must be one of sgd, rowadagrad"),
    ],
)
def test_mistakes_say_what_is_allowed(overrides, message):
    with pytest.raises(ValueError, match=message):
        load_config(None, overrides)


def test_unreadable_config_files(tmp_path):
    with pytest.raises(ValueError, match="cannot read config"):
        load_config(str(tmp_path / "missing.toml"))
    (tmp_path / "bad.toml").write_text("[train\nsteps = ")
    with pytest.raises(ValueError, match="not valid TOML"):
        load_config(str(tmp_path / "bad.toml"))


RECIPES = sorted((Path(__file__).resolve().parents[2] / "recipes").glob("*.toml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.stem for r in RECIPES])
def test_recipes_load_and_name_their_data(recipe):
    config = load_config(str(recipe))
    assert config.name == recipe.stem
    if config.data.source == "seqrec":
        assert config.model.backbone == "sasrec" and config.train.patience > 0
        assert config.data.path.startswith("../shared/data/seqrec/")
