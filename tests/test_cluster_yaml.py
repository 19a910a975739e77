"""Every cluster YAML must pass Ray's own schema, offline."""
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CLUSTER_FILES = [REPO / "cluster.yaml", *sorted((REPO / "clusters").glob("*.yaml"))]


@pytest.mark.parametrize("path", CLUSTER_FILES, ids=lambda p: p.name)
def test_cluster_yaml_validates(path):
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load(path.read_text())
    validate_config(prepare_config(config))
    assert config["available_node_types"], "a cluster needs node types"
