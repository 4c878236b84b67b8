from pathlib import Path

import pytest

from megaclass import samplers
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
        (["head.matmul_dtype=fp16"], "head.matmul_dtype must be one of auto, fp32, bf16"),
        (["data.source=features"], "data.path is required"),
        (["train=3"], "train must be a section"),
        (["optim.momentum=1.0"], "optim.momentum must be in"),
        (["steps"], "--set expects key=value"),
        (["head.sampler=hnsw"], "head.sampler must be one of full, random, knn"),
        (["head.random.rate=5000"], "\\[head.random\\] Random rate must be in \\(0, 1\\]"),
        (["head.knn.budget=0"], "\\[head.knn\\] KNN budget must be > 0"),
        (["head.knn.build=lsh"], "\\[head.knn\\] KNN build must be 'auto', 'exact' or 'ivf'"),
        (["head.knn.k=2.5"], "head.knn.k must be int"),
        (["head.ann.bogus=1"], "unknown config key head.ann.bogus; allowed in \\[head.ann\\]"),
        (["optim.head_optimizer=adam"], "optim.head_optimizer must be one of sgd, rowadagrad"),
    ],
)
def test_mistakes_say_what_is_allowed(overrides, message):
    with pytest.raises(ValueError, match=message):
        load_config(None, overrides)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("head.budget=0.1", "head.knn.budget \\(knn\\) or head.random.rate \\(random\\)"),
        ("head.knn_k=8", "head.knn.k"),
        ("head.graph_build='ivf'", "head.knn.build"),
        ("head.refresh_every=100", "head.knn.refresh_every or head.ann.refresh_every"),
        ("head.ann_bits=256", "head.ann.num_bits"),
        ("head.ann_uniform=0.02", "head.ann.uniform"),
    ],
)
def test_old_flat_keys_name_their_new_key(old, new):
    with pytest.raises(ValueError, match=f"config key {old.split('=')[0]} is now {new}"):
        load_config(None, [old])


def test_sampler_sections_are_the_samplers_themselves():
    config = load_config(None, ["head.sampler=knn", "head.knn.k=8", "head.knn.budget=500"])
    sampler = config.head.build_sampler()
    assert sampler == samplers.KNN(k=8, budget=500.0) and sampler is not config.head.knn
    assert load_config(
        None, ["head.sampler=ann", "head.ann.num_lists=16"]
    ).head.build_sampler() == (samplers.ANN(num_lists=16))
    assert load_config(None, ["head.sampler=full"]).head.build_sampler() == samplers.Full()


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
