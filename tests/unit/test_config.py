from pathlib import Path

import pytest

from megaclass import samplers
from megaclass.bench.heads import HeadBenchConfig
from megaclass.data.synthetic import DEFAULT_NUM_CLASSES, SyntheticCatalog
from megaclass.train.config import DataConfig, RunConfig, from_dict, load_config, to_toml
from megaclass.train.reference import _line_comments

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
        (["head.knn.build=lsh"], "\\[head.knn\\] KNN build must be one of \\('auto', 'exact'"),
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


REPOSITORY = Path(__file__).resolve().parents[2]
RECIPES = sorted((REPOSITORY / "recipes").glob("*.toml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.stem for r in RECIPES])
def test_recipes_load_and_name_their_data(recipe):
    config = load_config(str(recipe))
    assert config.name == recipe.stem
    if config.data.source == "seqrec":
        assert config.model.backbone == "sasrec" and config.train.patience > 0
        assert Path(config.data.path).parent == REPOSITORY.parent / "shared" / "data" / "seqrec"


def test_recipes_name_the_same_data_from_any_folder(tmp_path, monkeypatch):
    recipe = REPOSITORY / "recipes" / "seqrec-beauty.toml"
    from_root = load_config(str(recipe)).data.path
    monkeypatch.chdir(tmp_path)
    assert load_config(str(recipe)).data.path == from_root
    monkeypatch.chdir(REPOSITORY / "recipes")
    assert load_config("seqrec-beauty.toml").data.path == from_root


def test_a_relative_data_path_in_a_file_is_relative_to_the_file_and_kept_absolute(
    tmp_path, monkeypatch
):
    (tmp_path / "configs").mkdir()
    config_file = tmp_path / "configs" / "run.toml"
    config_file.write_text('[data]\nsource = "features"\npath = "../data/features"\n')
    monkeypatch.chdir(tmp_path / "configs")
    config = load_config("run.toml")
    assert config.data.path == str(tmp_path / "data" / "features")
    saved = tmp_path / "elsewhere" / "config.toml"  # a run's saved config, read back on resume
    saved.parent.mkdir()
    saved.write_text(to_toml(config))
    assert load_config(str(saved)).data.path == config.data.path


def test_a_relative_data_path_from_set_is_relative_to_the_current_folder(tmp_path, monkeypatch):
    config_file = tmp_path / "run.toml"
    config_file.write_text('[data]\nsource = "seqrec"\npath = "in-file.txt"\n')
    monkeypatch.chdir(tmp_path / "..")
    config = load_config(str(config_file), ["data.path=sub/walks.txt"])
    assert config.data.path == str(tmp_path.parent / "sub" / "walks.txt")
    assert load_config(None, ["data.path=/abs/walks.txt"]).data.path == "/abs/walks.txt"
    assert load_config(None, []).data.path == ""  # synthetic: no path


def test_num_classes_defaults_to_the_data_s_own_count():
    default = load_config(None)
    assert default.data.num_classes == 0
    # the default run and its benchmark still have the synthetic catalogue's 1,000,000 classes
    assert SyntheticCatalog(default.data.num_classes).num_classes == 1_000_000
    assert HeadBenchConfig(run=default).num_classes == 1_000_000
    features = load_config(None, ["data.source=features", "data.path=x"])
    with pytest.raises(ValueError, match="bench heads reads no data"):
        HeadBenchConfig(run=features)
    assert f"synthetic {DEFAULT_NUM_CLASSES:,}" in _line_comments(DataConfig)["num_classes"]
    with pytest.raises(ValueError, match=r"data\.num_classes must be >= 0"):
        load_config(None, ["data.num_classes=-1"])


def test_the_library_defaults_are_the_trainers():
    """``KNN()``, ``ANN()``, ``Random()`` and ``SparseSGD(head, lr)`` are what ``megaclass
    train`` builds from its defaults."""
    import torch

    import megaclass
    from megaclass.train.loop import build_head, build_head_optimizer

    config = RunConfig()
    assert config.head.build_sampler() == megaclass.samplers.KNN()
    assert config.head.ann == megaclass.samplers.ANN()
    assert config.head.random == megaclass.samplers.Random()
    small = load_config(None, ["data.num_classes=100", "head.sampler='full'"])
    head = build_head(small, 100, None, torch.device("cpu"))
    trainer_optimizer = build_head_optimizer(small, head)
    library_optimizer = megaclass.optim.SparseSGD(head, lr=small.optim.lr)
    assert trainer_optimizer.defaults == library_optimizer.defaults
    assert library_optimizer.defaults["row_norm"] > 0  # CosFace: the rows kept at a norm
