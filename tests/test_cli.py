"""The console script: help texts, pending commands, make-tiny-model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from k5tune.cli import build_parser, main

COMMANDS = ["train", "cache", "generate", "bench", "estimate", "server", "configure", "demo", "make-tiny-model", "probe",
            "convert-lora"]


def k5tune(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    executable = Path(sys.executable).with_name("k5tune")
    return subprocess.run([str(executable), *args], capture_output=True, text=True, cwd=cwd, check=False)


def test_help_lists_every_command():
    result = k5tune("--help")
    assert result.returncode == 0
    for command in COMMANDS:
        assert command in result.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args([command, "--help"])
    assert info.value.code == 0
    assert len(capsys.readouterr().out) > 100


def test_train_help_documents_every_config_key(capsys):
    from k5tune.config.schema import TrainConfig

    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    out = capsys.readouterr().out
    for name in TrainConfig.model_fields:
        assert f"--{name} " in out


def test_config_errors_found_before_training_say_so_in_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    """A setting the model cannot take (a CREPA block it does not have) is refused in one line, exit 2."""
    import json

    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.json").write_text(json.dumps({"crepa_enabled": True, "crepa_block_index": 99}))
    (tmp_path / "config" / "multidatabackend.json").write_text(json.dumps([
        {"id": "v", "dataset_type": "video", "instance_data_dir": "clips"},
        {"id": "t", "dataset_type": "text_embeds", "default": True}]))
    monkeypatch.chdir(tmp_path)
    assert main(["train"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "key 'crepa_block_index'" in err and "valid: 0..31" in err


def test_configure_example_writes_the_example_files(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["configure", "--example"]) == 0
    assert (tmp_path / "config" / "config.json.example").is_file()
    assert (tmp_path / "config" / "multidatabackend.json.example").is_file()


@pytest.mark.slow
def test_make_tiny_model_command(tmp_path):
    result = k5tune("make-tiny-model", str(tmp_path / "m"), "--i2v")
    assert result.returncode == 0, result.stderr
    assert "image-to-video" in result.stdout
    assert (tmp_path / "m" / "model_index.json").read_text().count("Kandinsky5I2VPipeline") == 1
    assert main(["make-tiny-model", str(tmp_path / "n"), "--nabla"]) == 0
    config = json.loads((tmp_path / "n" / "transformer" / "config.json").read_text())
    assert config["attention_type"] == "nabla" and config["attention_P"] == 0.9


def test_unknown_argument_to_a_plain_command_is_rejected(capsys):
    with pytest.raises(SystemExit) as info:
        main(["make-tiny-model", "x", "--bogus"])
    assert info.value.code == 2


def test_every_command_module_is_registered_with_its_interface():
    """One module per command under k5tune/commands/, each in the registry the parser is built from."""
    import importlib
    import pkgutil

    import k5tune.commands
    from k5tune.commands import COMMANDS as REGISTRY
    from k5tune.commands import command_help, command_name, takes_overrides

    modules = [importlib.import_module(f"k5tune.commands.{info.name}")
               for info in pkgutil.iter_modules(k5tune.commands.__path__) if not info.name.startswith("_")]
    assert sorted(m.__name__ for m in modules) == sorted(m.__name__ for m in REGISTRY)
    assert sorted(command_name(command) for command in REGISTRY) == sorted(COMMANDS)
    for command in REGISTRY:
        assert callable(command.add_arguments) and callable(command.run), command.__name__
        line, description = command_help(command)
        assert line and description and "\n" not in description, command.__name__
    # only the commands that read config.json take --key=value overrides
    assert [command_name(c) for c in REGISTRY if takes_overrides(c)] == ["train", "cache"]


def test_command_help_is_printed_as_written(capsys):
    """The docstring's text reaches --help as is: argparse does not %-format a description."""
    with pytest.raises(SystemExit):
        build_parser().parse_args(["probe", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "at least 10% lower" in out and "%%" not in out


def test_python_dash_m_runs_the_cli():
    result = subprocess.run([sys.executable, "-m", "k5tune.cli", "--version"], capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0 and result.stdout.startswith("k5tune ")
