from pathlib import Path

import pytest

from recemb.config import from_mapping, load_config_file
from recemb.data import DATASETS
from recemb.models import model_config
from recemb.run import DEFAULTS, merge_config
from recemb.storage import StoreSettings
from recemb.tables import table_from_mapping
from recemb.train import TrainConfig

ZOO = sorted((Path(__file__).parents[1] / "models").glob("*.yaml"))


def test_the_zoo_has_configs():
    assert ZOO


@pytest.mark.parametrize("path", ZOO, ids=lambda p: p.name)
def test_every_zoo_config_resolves_to_valid_settings(path):
    conf = merge_config(DEFAULTS, load_config_file(path))
    table_from_mapping(conf["table"])
    settings = dict(conf["model"])
    model_config(settings.pop("name"), settings)
    from_mapping(TrainConfig, conf["train"])
    from_mapping(StoreSettings, conf["store"])
    assert conf["data"].split(":")[0] in DATASETS
