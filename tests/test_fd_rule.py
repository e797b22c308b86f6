"""FD needs more reference images and more samples than feature dimensions, strictly, for every feature net (issue
27): below that FD is left out with one line and KID ranks; training's eval.monitor=fid is then refused."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from diffexp.config import CONF_DIR
from diffexp.data import DigitsDataModule, digits_images, digits_split
from diffexp.errors import ConfigError
from diffexp.features import load_feature_net
from diffexp.heldout import Reference, evaluation_reference
from diffexp.metrics import fd_refusal
from helpers import compose_train

INCEPTION_WIDTH = 2048  # InceptionV3's pool features (the net cannot load here: its rule is tested on the functions)


@pytest.mark.parametrize("net, width", [("digits", 64), ("dinov2", 1024), ("inception", INCEPTION_WIDTH)])
def test_fd_is_refused_at_the_width_and_computed_above_it(net, width):
    for n_real, n_fake in ((width, 10 * width), (10 * width, width), (width - 1, width - 1)):
        refused = fd_refusal(n_real, n_fake, width, net)
        assert refused and "\n" not in refused and f"eval={net}" in refused and "KID" in refused
    assert fd_refusal(width + 1, width + 1, width, net) is None


def test_the_shipped_inception_default_is_above_its_width():
    shipped = OmegaConf.load(Path(CONF_DIR) / "eval" / "inception.yaml")
    assert shipped.n_samples > INCEPTION_WIDTH
    assert fd_refusal(shipped.reference_size, shipped.n_samples, INCEPTION_WIDTH, "inception") is None


def test_the_digits_net_leaves_fd_out_at_its_width_and_kid_ranks(tmp_path):
    net = load_feature_net("digits", channels=1, resolution=16)
    assert net.num_features == 64
    images = digits_images(16)
    train, held = (images[i] for i in digits_split(len(images)))
    reference = Reference.build(train, held, net, "digits", tmp_path, kid_subset_size=50)
    at_width, _ = reference.score([train[:64]])
    assert at_width["fid"] is None and "FD refused" in at_width["fid_refused"] and at_width["kid"] is not None
    assert reference.floor(64)["fid"] is None
    above, _ = reference.score([train[:65]])
    assert above["fid"] > 0 and "fid_refused" not in above and reference.floor(65)["fid"] > 0
    small = Reference.build(train, held, net, "digits", tmp_path, reference_size=64, kid_subset_size=50)
    assert small.score([train[:200]])[0]["fid"] is None  # 64 reference images: the other side refuses it


def test_training_with_the_digits_net_at_its_width_refuses_monitor_fid_and_warns_with_kid(tmp_path, caplog):
    dm = DigitsDataModule(resolution=16, channels=1, batch_size=16, flip=False)
    dm.prepare()
    cfg = compose_train(["eval=digits", "data.resolution=16", "eval.n_samples=64"], tmp_path / "run")
    with pytest.raises(ConfigError, match=r"^eval\.monitor=fid: FD refused.*set eval\.monitor=kid$") as e:
        evaluation_reference(cfg.eval, cfg.data, dm, 64, monitored=True)
    assert "\n" not in str(e.value)
    cfg.eval.monitor = "kid"
    with caplog.at_level(logging.WARNING, logger="diffexp.evaluate"):
        evaluation_reference(cfg.eval, cfg.data, dm, 64, monitored=True)
    assert any("FD refused" in r.getMessage() for r in caplog.records)
