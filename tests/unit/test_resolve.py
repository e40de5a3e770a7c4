"""resolve_typed_input: unpack a model or a dict of several inputs (SPEC 2)."""

from __future__ import annotations

from typing import Any, assert_type

import pydantic
import pytest

from pipeline import resolve_typed_input


class Audio(pydantic.BaseModel):
    path: str


class LoudAudio(Audio):
    gain: float = 2.0


def test_instance_returns_itself_and_no_extras() -> None:
    audio = Audio(path="a.wav")
    model, extras = resolve_typed_input(audio, Audio)
    assert_type(model, Audio)
    assert model is audio
    assert extras == {}


def test_instance_is_returned_even_with_dict_key() -> None:
    audio = Audio(path="a.wav")
    assert resolve_typed_input(audio, Audio, dict_key="audio") == (audio, {})


def test_subclass_instance_is_accepted_as_is() -> None:
    loud = LoudAudio(path="b.wav")
    model, extras = resolve_typed_input(loud, Audio)
    assert model is loud
    assert extras == {}


def test_dict_returns_keyed_value_and_other_entries() -> None:
    audio = Audio(path="a.wav")
    inputs: dict[str, Any] = {"lyrics": ["la"], "audio": audio, "profile": {"bpm": 120}}
    model, extras = resolve_typed_input(inputs, Audio, dict_key="audio")
    assert model is audio
    assert extras == {"lyrics": ["la"], "profile": {"bpm": 120}}
    assert "audio" in inputs  # the caller's dict is left alone


def test_dict_with_subclass_value() -> None:
    loud = LoudAudio(path="b.wav")
    model, _ = resolve_typed_input({"audio": loud}, Audio, dict_key="audio")
    assert model is loud


@pytest.mark.parametrize("inputs", [{"lyrics": 1}, {"audio": None, "lyrics": 1}])
def test_dict_missing_or_none_key(inputs: dict[str, Any]) -> None:
    with pytest.raises(TypeError, match="Dict input missing key 'audio'"):
        resolve_typed_input(inputs, Audio, dict_key="audio")


def test_dict_value_of_wrong_type() -> None:
    with pytest.raises(TypeError, match="Expected Audio") as info:
        resolve_typed_input({"audio": "a.wav"}, Audio, dict_key="audio")
    assert "str" in str(info.value)


@pytest.mark.parametrize(
    ("value", "type_name"),
    [("a.wav", "str"), (3, "int"), (None, "NoneType"), ([Audio(path="x")], "list")],
)
def test_other_input_raises_expected_got(value: object, type_name: str) -> None:
    with pytest.raises(TypeError, match=r"Expected Audio") as info:
        resolve_typed_input(value, Audio, dict_key="audio")
    assert str(info.value).endswith(f"got {type_name}")


def test_dict_without_dict_key_raises_expected_got_dict() -> None:
    with pytest.raises(TypeError, match=r"Expected Audio.*got dict"):
        resolve_typed_input({"audio": Audio(path="x")}, Audio)
