"""SpikingConfig and StacConfig refuse invalid values with clear messages."""

import pytest

import stac
from stac import SpikingConfig, StacConfig, StacFormatError


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(timesteps=0), ValueError, "timesteps"),
    (dict(timesteps=-3), ValueError, "timesteps"),
    (dict(timesteps=1.5), TypeError, "timesteps"),
    (dict(timesteps="12"), TypeError, "timesteps"),
    (dict(coding="morse"), ValueError, "known codings"),
    (dict(engine="quantum"), ValueError, "known engines"),
    (dict(threshold_margin=-1.0), ValueError, "positive"),
    (dict(threshold_margin=0), ValueError, "positive"),
    (dict(threshold_margin=float("nan")), ValueError, "positive"),
    (dict(min_threshold=-1e-3), ValueError, "positive"),
    (dict(threshold_margin="4"), TypeError, "number"),
    (dict(coding="bitplane", timesteps=40), ValueError, "timesteps"),
    (dict(steps_per_octave=0), ValueError, "steps_per_octave"),
    (dict(steps_per_octave=9), ValueError, "steps_per_octave"),
    (dict(steps_per_octave=2.0), TypeError, "steps_per_octave"),
    (dict(coarse_octaves=-1), ValueError, "coarse_octaves"),
    (dict(coarse_octaves=1.0), TypeError, "coarse_octaves"),
    (dict(coding="rate", steps_per_octave=2), ValueError, "signed_digit only"),
    (dict(layer_overrides=[("*", {"coding": "bitplane", "steps_per_octave": 2})]), ValueError, "signed_digit only"),
])
def test_invalid_spiking_configs_are_refused(kwargs, error, match):
    with pytest.raises(error, match=match):
        SpikingConfig(**kwargs)


def test_spiking_config_round_trips_through_a_dict():
    cfg = SpikingConfig(timesteps=8, coding="bitplane", threshold_margin=2.0, steps_per_octave=1)
    assert SpikingConfig.from_dict(cfg.to_dict()) == cfg
    dense = SpikingConfig(steps_per_octave=3, layer_overrides=[("*.encoder_o", {"steps_per_octave": 1})])
    assert SpikingConfig.from_dict(dense.to_dict()) == dense
    assert dense.for_encoder("model.layers.0.self_attn.encoder_o").steps_per_octave == 1


def test_each_coding_gets_its_own_default_steps_per_octave():
    assert SpikingConfig().steps_per_octave == 8 and SpikingConfig(coding="rate").steps_per_octave == 1
    assert SpikingConfig().replace(coding="bitplane").steps_per_octave == 1
    default = SpikingConfig()
    for name in ("model.layers.0.self_attn.encoder_q", "model.layers.0.self_attn.encoder_p"):
        assert default.for_encoder(name).steps_per_octave == 1  # spiking attention: one step per octave
    # the down_proj input keeps 2 more top octaves coarse than the config, relative like its timesteps
    for config, expected in ((default, (12, 8, 6)), (SpikingConfig(steps_per_octave=4, coarse_octaves=1), (12, 4, 3)),
                             (SpikingConfig(steps_per_octave=1), (12, 1, 0)), (SpikingConfig(coding="bitplane"), (12, 1, 0))):
        down = config.for_encoder("model.layers.0.mlp.encoder_down")
        assert (down.timesteps, down.steps_per_octave, down.coarse_octaves) == expected
    with pytest.raises(TypeError, match="coarse_octaves_offset"):
        SpikingConfig(layer_overrides=[("*", {"coarse_octaves_offset": 1.5})])
    assert SpikingConfig(steps_per_octave=2).replace(timesteps=8).steps_per_octave == 2
    assert (SpikingConfig().coarse_octaves, SpikingConfig(steps_per_octave=1).coarse_octaves) == (4, 0)
    assert SpikingConfig(steps_per_octave=1).replace(steps_per_octave=3).coarse_octaves == 4
    mixed = SpikingConfig(layer_overrides=[("*.encoder_o", {"coding": "rate"})])
    assert mixed.for_encoder("model.layers.0.self_attn.encoder_o").steps_per_octave == 1
    down = mixed.for_encoder("model.layers.0.mlp.encoder_down")
    assert (down.steps_per_octave, down.coarse_octaves) == (8, 4)  # the config's schedule (no default overrides here)


def test_overrides_keep_the_configs_schedule_where_their_coding_allows_it():
    # an old checkpoint: bitplane with signed_digit for one group, saved before the schedule keys existed
    old = SpikingConfig(coding="bitplane", layer_overrides=[("*.encoder_down", {"coding": "signed_digit"})]).to_dict()
    del old["steps_per_octave"], old["coarse_octaves"]
    down = SpikingConfig.from_dict(old).for_encoder("model.layers.0.mlp.encoder_down")
    assert (down.coding, down.steps_per_octave, down.coarse_octaves) == ("signed_digit", 1, 0)  # what it ran
    two = SpikingConfig(steps_per_octave=2, coarse_octaves=1,
                        layer_overrides=[("*.encoder_o", {"coding": "signed_digit"}), ("*.encoder_down", {"steps_per_octave": 3})])
    assert (two.for_encoder("x.encoder_o").steps_per_octave, two.for_encoder("x.encoder_o").coarse_octaves) == (2, 1)
    assert (two.for_encoder("x.encoder_down").steps_per_octave, two.for_encoder("x.encoder_down").coarse_octaves) == (3, 1)
    dense = SpikingConfig(steps_per_octave=1, layer_overrides=[("*.encoder_down", {"steps_per_octave": 4})])
    assert dense.for_encoder("x.encoder_down").coarse_octaves == 4  # a newly dense group gets the default


def test_a_schedule_of_none_is_refused_in_overrides_and_saved_configs():
    with pytest.raises(TypeError, match="steps_per_octave"):
        SpikingConfig(layer_overrides=[("*", {"steps_per_octave": None})])
    with pytest.raises(TypeError, match="coarse_octaves"):
        SpikingConfig.from_dict({**SpikingConfig().to_dict(), "coarse_octaves": None})


def test_a_checkpoint_from_before_dense_schedules_reads_as_one_step_per_octave():
    old = SpikingConfig().to_dict()
    del old["steps_per_octave"], old["coarse_octaves"]
    assert (SpikingConfig.from_dict(old).steps_per_octave, SpikingConfig.from_dict(old).coarse_octaves) == (1, 0)


def test_unknown_keys_in_a_saved_spiking_config_are_refused():
    with pytest.raises(ValueError, match="unknown spiking config keys"):
        SpikingConfig.from_dict({"timesteps": 8, "leak": 0.5})


def test_stac_config_lists_what_stays_in_float():
    cfg = StacConfig(text_config={"model_type": "llama"})
    ops = " ".join(cfg.spiking["float_operations"])
    assert "softmax" in ops and "lm_head" not in ops  # the lm_head's input spikes by default
    float_head = StacConfig(text_config={"model_type": "llama"}, spiking=SpikingConfig(spiking_head=False).to_dict())
    assert "lm_head" in float_head.spiking["float_operations"]


def test_a_config_from_a_newer_format_is_refused():
    with pytest.raises(StacFormatError, match="newer"):
        StacConfig(text_config={"model_type": "llama"}, stac_format_version=stac.STAC_FORMAT_VERSION + 1)


def test_an_unknown_architecture_is_named_with_the_supported_ones():
    with pytest.raises(stac.UnsupportedArchitectureError, match="'bert'.*supported.*llama"):
        StacConfig(text_config={"model_type": "bert"})


def test_a_bad_spiking_section_is_refused():
    with pytest.raises(ValueError, match="timesteps"):
        StacConfig(text_config={"model_type": "llama"}, spiking={"timesteps": 0})


def test_layer_overrides_apply_by_pattern_in_order():
    cfg = SpikingConfig(timesteps=12, layer_overrides=[("*.mlp.encoder_down", {"timesteps": 14}),
                                                       ("model.layers.0.*", {"threshold_margin": 2.0})])
    assert cfg.for_encoder("model.layers.3.mlp.encoder_down").timesteps == 14
    assert cfg.for_encoder("model.layers.3.self_attn.encoder_qkv").timesteps == 12
    first = cfg.for_encoder("model.layers.0.mlp.encoder_down")
    assert (first.timesteps, first.threshold_margin) == (14, 2.0)
    assert SpikingConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("overrides, error", [
    ([("*", {"leak": 1})], ValueError),
    ([("*", {"timesteps": 0})], ValueError),
    ([("*", {"coding": "morse"})], ValueError),
    ([("*", {"threshold_margin_factor": 0})], ValueError),
    ([("*", {"threshold_margin_factor": "2"})], ValueError),
    (["*"], TypeError),
])
def test_invalid_layer_overrides_are_refused(overrides, error):
    with pytest.raises(error):
        SpikingConfig(layer_overrides=overrides)


def test_the_default_allocates_timesteps_by_measured_sensitivity():
    cfg = SpikingConfig()
    assert cfg.for_encoder("model.layers.4.mlp.encoder_down").timesteps == cfg.timesteps + 2
    assert cfg.for_encoder("model.layers.4.mlp.encoder_gate_up").timesteps == cfg.timesteps - 1
    assert cfg.for_encoder("model.layers.4.self_attn.encoder_qkv").timesteps == cfg.timesteps
    assert cfg.for_encoder("transformer.h.0.mlp.encoder_proj").timesteps == cfg.timesteps + 2
    scaled = SpikingConfig(timesteps=14)
    assert scaled.for_encoder("model.layers.4.mlp.encoder_down").timesteps == 16
    uniform = SpikingConfig(timesteps=14, layer_overrides=())
    assert uniform.for_encoder("model.layers.4.mlp.encoder_down").timesteps == 14
    assert SpikingConfig(timesteps=1).for_encoder("x.mlp.encoder_gate_up").timesteps == 1


def test_the_default_widens_the_lm_head_margin_relative_to_the_base_margin():
    cfg = SpikingConfig()
    assert cfg.for_encoder("encoder_head").threshold_margin == 1.6 * cfg.threshold_margin == 8.0
    assert cfg.for_encoder("model.layers.4.mlp.encoder_gate_up").threshold_margin == cfg.threshold_margin
    assert SpikingConfig(threshold_margin=4.0).for_encoder("encoder_head").threshold_margin == pytest.approx(6.4)
    both = SpikingConfig(layer_overrides=[("encoder_head", {"threshold_margin": 3.0, "threshold_margin_factor": 2.0})])
    assert both.for_encoder("encoder_head").threshold_margin == 6.0
    assert SpikingConfig.from_dict(cfg.to_dict()) == cfg


def test_a_non_integer_timestep_offset_is_refused():
    with pytest.raises(TypeError, match="timestep_offset"):
        SpikingConfig(layer_overrides=[("*", {"timestep_offset": 1.5})])
