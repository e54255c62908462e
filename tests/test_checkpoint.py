import json
import shutil

import pytest

from orpheus_local.weights import checkpoint as ck
from orpheus_local.weights.checkpoint import CheckpointError


def test_demo_checkpoint_loads_through_the_public_loader(demo_dirs):
    model_dir, snac_dir = demo_dirs
    assert ck.resolve_model_dir(model_dir) == model_dir
    config = ck.load_config(model_dir)
    assert config["vocab_size"] == 156940 and config["tie_word_embeddings"] is True
    tok = ck.load_tokenizer(model_dir)
    assert tok.convert_tokens_to_ids("<custom_token_2>") == 128258
    snac = ck.load_snac(ck.resolve_snac_dir(snac_dir))
    assert snac.hop_length == 512 and snac.sampling_rate == 24000


def test_missing_directory_names_the_fetch_command(tmp_path):
    with pytest.raises(CheckpointError, match="orpheus-local fetch-weights") as err:
        ck.resolve_model_dir(tmp_path / "nowhere")
    assert "not found" in str(err.value)


def test_half_checkpoint_names_what_is_missing(demo_dirs, tmp_path):
    half = tmp_path / "half"
    shutil.copytree(demo_dirs[0], half)
    (half / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="missing model.safetensors"):
        ck.resolve_model_dir(half)
    snac = tmp_path / "snac"
    snac.mkdir()
    (snac / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="missing pytorch_model.bin"):
        ck.resolve_snac_dir(snac)


def test_sharded_checkpoint_with_a_missing_shard(demo_dirs, tmp_path):
    sharded = tmp_path / "sharded"
    shutil.copytree(demo_dirs[0], sharded)
    (sharded / "model.safetensors").rename(sharded / "model-00001-of-00002.safetensors")
    index = {"metadata": {}, "weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="model-00002-of-00002.safetensors"):
        ck.resolve_model_dir(sharded)


def test_unreachable_hub_gives_the_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(CheckpointError, match="unreachable.*fetch-weights"):
        ck.resolve_model_dir("canopylabs/orpheus-3b-0.1-ft")


def test_fetch_weights_recognises_a_directory_already_present(demo_dirs, tmp_path, monkeypatch):
    dest = tmp_path / "weights"
    shutil.copytree(demo_dirs[0], dest / ck.MODEL_SUBDIR)
    shutil.copytree(demo_dirs[1], dest / ck.SNAC_SUBDIR)

    def no_download(*a, **k):
        raise AssertionError("must not download")

    monkeypatch.setattr(ck, "_download", no_download)
    monkeypatch.setattr(ck, "_hub_files", no_download)
    assert ck.fetch_weights(dest) == (dest / ck.MODEL_SUBDIR, dest / ck.SNAC_SUBDIR)
