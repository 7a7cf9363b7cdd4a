"""Finding a checkpoint (folder, cached or reachable hub id) and refusing loads that leave weights random."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import pytest
from huggingface_hub import constants as hub_constants
from huggingface_hub.errors import RepositoryNotFoundError
from tiny_configs import TINY_STUDENT

from vldistill.errors import ConfigError
from vldistill.models.loading import check_loaded_weights, checkpoint_model_type, resolve_pretrained
from vldistill.models.students import StudentConfig, build_student, save_student, student_processor
from vldistill.models.teachers import TeacherConfig, TinyTeacherConfig, build_teacher

MISSING_HUB_ID = "nobody-vldistill/no-such-vilt"


@pytest.fixture
def network_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every hub request ``resolve_pretrained`` makes is recorded here and fails as if offline."""
    calls: list[str] = []

    def unreachable(url: str, **kwargs: object) -> None:
        calls.append(url)
        raise ConnectionError("[Errno -2] Name or service not known")

    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", unreachable)
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda repo_id, filename: None)
    return calls


def test_a_folder_is_returned_as_it_is(tmp_path: Path, network_calls: list[str]) -> None:
    assert resolve_pretrained(str(tmp_path), "student.pretrained") == str(tmp_path)
    assert network_calls == []


@pytest.mark.parametrize("name", ["runs/x/final", "./vilt", "/models/vilt"])
def test_a_missing_folder_is_named_with_its_key(name: str, network_calls: list[str]) -> None:
    with pytest.raises(ConfigError) as err:
        resolve_pretrained(name, "student.pretrained")
    assert str(err.value) == (
        f"student.pretrained '{name}' is not a folder (nor a hub id); "
        "fix: --set student.pretrained=/local/dir (a folder holding the checkpoint)"
    )
    assert network_calls == []


def test_offline_hub_id_not_cached_fails_without_any_request(
    monkeypatch: pytest.MonkeyPatch, network_calls: list[str]
) -> None:
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ConfigError) as err:
        resolve_pretrained(MISSING_HUB_ID, "method.teachers.clip.pretrained")
    assert str(err.value) == (
        f"method.teachers.clip.pretrained '{MISSING_HUB_ID}' is not a local folder, and this hub id is not in the "
        "Hugging Face cache while offline mode (HF_HUB_OFFLINE) is on; fix: --set method.teachers.clip.pretrained="
        "/local/dir (a folder holding the checkpoint), or download it where the hub is reachable"
    )
    assert network_calls == []


def test_unreachable_hub_is_asked_once_not_retried(monkeypatch: pytest.MonkeyPatch, network_calls: list[str]) -> None:
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    with pytest.raises(
        ConfigError, match=r"the hub cannot be reached \(ConnectionError\); fix: --set student.pretrained="
    ):
        resolve_pretrained(MISSING_HUB_ID, "student.pretrained")
    assert network_calls == [f"https://huggingface.co/{MISSING_HUB_ID}/resolve/main/config.json"]


def test_unknown_hub_id_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda repo_id, filename: None)

    def not_found(url: str, **kwargs: object) -> None:
        raise RepositoryNotFoundError("404", response=SimpleNamespace(headers={}, request=None))

    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", not_found)
    with pytest.raises(ConfigError, match="the Hugging Face hub has no model of that id that this login may read"):
        resolve_pretrained(MISSING_HUB_ID, "student.pretrained")


def test_a_cached_hub_id_needs_no_network(monkeypatch: pytest.MonkeyPatch, network_calls: list[str]) -> None:
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda repo_id, filename: "/cache/config.json")
    assert resolve_pretrained("dandelin/vilt-b32-mlm", "student.pretrained") == "dandelin/vilt-b32-mlm"
    assert network_calls == []


def test_teacher_errors_name_the_teachers_key(monkeypatch: pytest.MonkeyPatch, network_calls: list[str]) -> None:
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    cfg = TeacherConfig(kind="clip", pretrained=MISSING_HUB_ID)
    with pytest.raises(ConfigError, match=r"^method\.teachers\.clip\.pretrained .*--set method\.teachers\.clip\."):
        build_teacher(cfg, key="method.teachers.clip")
    tiny = TeacherConfig(kind="text", tiny=TinyTeacherConfig(tokenizer=MISSING_HUB_ID))
    with pytest.raises(ConfigError, match=r"^method\.teachers\.text\.tiny\.tokenizer '"):
        build_teacher(tiny, key="method.teachers.text")
    assert network_calls == []


def test_offline_cli_prints_one_line_naming_the_key(tmp_path: Path) -> None:
    """The whole journey with HF_HUB_OFFLINE=1: exit 2, one line, no retries (was: ~90 lines of traceback)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "vldistill", "plan", "--preset", "smoke", "--set", "data.world_scale=0.1"]
        + ["--set", f"student.pretrained={MISSING_HUB_ID}"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.splitlines() == [
        f"error: student.pretrained '{MISSING_HUB_ID}' is not a local folder, and this hub id is not in the Hugging "
        "Face cache while offline mode (HF_HUB_OFFLINE) is on; fix: --set student.pretrained=/local/dir (a folder "
        "holding the checkpoint), or download it where the hub is reachable"
    ]


def test_model_type_of_a_folder(minilm_path: Path, tmp_path: Path) -> None:
    assert checkpoint_model_type(str(minilm_path), "student.pretrained") == "bert"
    with pytest.raises(ConfigError, match=rf"^student.pretrained '{tmp_path}' has no readable config.json"):
        checkpoint_model_type(str(tmp_path), "student.pretrained")


def test_only_new_ok_prefixes_may_start_random() -> None:
    info = {
        "missing_keys": {"classifier.0.weight", "vilt.pooler.dense.weight", "vilt.layernorm.bias"},
        "mismatched_keys": {("classifier.3.weight", (29, 64), (3, 64))},
    }
    with pytest.raises(ConfigError) as err:
        check_loaded_weights(info, "/m", "student.pretrained", new_ok=("classifier.",), fix="give all weights")
    assert str(err.value) == (
        "student.pretrained '/m' lacks 2 weights (vilt.layernorm.bias, vilt.pooler.dense.weight), "
        "which would start random; fix: give all weights"
    )
    head_only = {"missing_keys": {"classifier.0.weight"}, "mismatched_keys": {("classifier.3.weight", (2,), (3,))}}
    check_loaded_weights(head_only, "/m", "student.pretrained", new_ok=("classifier.",), fix="-")
    with pytest.raises(ConfigError, match=r"lacks 1 weights \(classifier.0.weight\) and holds 1 weights of another"):
        check_loaded_weights(head_only, "/m", "fusion teacher", fix="-")


def test_a_home_relative_student_folder_gives_model_and_processor(tmp_path: Path, monkeypatch) -> None:
    """``~/...`` is a folder for the processor too, not a hub id (both go through ``resolve_pretrained``)."""
    tiny = StudentConfig(**TINY_STUDENT)
    save_student(build_student(tiny, "snli_ve", 3), tmp_path / "home" / "student", student_processor(tiny))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    cfg = StudentConfig(pretrained="~/student")
    assert build_student(cfg, "snli_ve", 3).config.hidden_size == 32
    processor = student_processor(cfg)
    assert processor.image_size == (32, 32) and processor.tokenizer.vocab_size == 30522
