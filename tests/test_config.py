"""neuralmd.config: settings dataclasses to TOML and back, with type-checked loading."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from neuralmd.config import load_config, save_config
from neuralmd.errors import InputError


@dataclass
class Example:
    name: str = "run"
    steps: int = 10
    timestep_fs: float = 0.5
    flag: bool = False
    temperatures_K: list[float] = field(default_factory=lambda: [300.0])
    ranges: list[list[float]] = field(default_factory=list)
    table: dict[str, float] = field(default_factory=dict)


def test_round_trip_keeps_every_field_and_type(tmp_path):
    settings = Example(name="x", steps=7, timestep_fs=2, flag=True, temperatures_K=[300, 350.5],
                       ranges=[[0.0, 1.5], [-2.0, 2.0]], table={"radius_A": 2.0, "lower_z_A": -2.938})
    save_config(settings, tmp_path / "a.toml")
    back = load_config(Example, tmp_path / "a.toml")
    assert back == settings
    assert isinstance(back.steps, int) and isinstance(back.flag, bool)


def test_an_int_is_a_float_but_not_the_other_way_round(tmp_path):
    (tmp_path / "a.toml").write_text("timestep_fs = 1\n")
    assert load_config(Example, tmp_path / "a.toml").timestep_fs == 1
    (tmp_path / "b.toml").write_text("steps = 1.5\n")
    with pytest.raises(InputError, match=r"b\.toml: key 'steps': 1\.5 is not of type int"):
        load_config(Example, tmp_path / "b.toml")
    (tmp_path / "c.toml").write_text("steps = true\n")  # a bool is not a count
    with pytest.raises(InputError, match="'steps'"):
        load_config(Example, tmp_path / "c.toml")


@pytest.mark.parametrize("text, fragments", [
    ("temperatures_K = [300, \"hot\"]\n", ["'temperatures_K'", "list[float]"]),
    ("ranges = [1.0, 2.0]\n", ["'ranges'"]),
    ("flag = 1\n", ["'flag'", "bool"]),
    ("nmae = \"x\"\n", ["'nmae'", "not a setting of Example", "expected keys: flag, name, ranges"]),
    ("steps = = 3\n", ["not valid TOML"]),
])
def test_bad_files_name_the_file_the_key_and_what_was_expected(tmp_path, text, fragments):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(InputError) as err:
        load_config(Example, path)
    message = str(err.value)
    assert message.startswith(str(path)) and "\n" not in message
    for fragment in fragments:
        assert fragment in message


def test_missing_file_and_renamed_keys(tmp_path):
    with pytest.raises(InputError, match=r"nowhere\.toml: settings file not found"):
        load_config(Example, tmp_path / "nowhere.toml")
    (tmp_path / "old.toml").write_text("n_steps = 4\n")
    assert load_config(Example, tmp_path / "old.toml", renamed={"n_steps": "steps"}).steps == 4


def test_a_table_of_the_wrong_type_is_refused_naming_the_key(tmp_path):
    (tmp_path / "a.toml").write_text('table = {radius_A = "wide"}\n')
    with pytest.raises(InputError, match="'table'"):
        load_config(Example, tmp_path / "a.toml")
