"""FusionTeacher: a fine-tuned ViLT per task (tiny), logits and re-normalised cross attention per view,
loading from vldistill-saved and Hugging Face ViLT directories, refusing a checkpoint of another task."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import ViltConfig, ViltForQuestionAnswering

from vldistill.data.examples import TaskExample
from vldistill.errors import ConfigError
from vldistill.models.fusion import FusionStudent
from vldistill.models.students import StudentConfig, build_student, save_student
from vldistill.models.teachers import FusionTeacher, TeacherConfig, TinyTeacherConfig, build_teacher
from vldistill.models.teachers.base import save_processor
from vldistill.training.experiment import student_processor

LAYOUT = {"vqa": (1, 1), "snli_ve": (1, 1), "vcr": (1, 4), "nlvr2": (2, 1)}
CLASSES = {"vqa": 5, "snli_ve": 3, "vcr": 4, "nlvr2": 2}


def make_batch(task: str, batch_size: int = 2, seed: int = 0):
    n_images, n_texts = LAYOUT[task]
    rng = np.random.default_rng(seed)
    words = ["red", "blue", "circle", "square", "left", "big", "is", "there"]
    examples = [
        TaskExample(
            f"{b}",
            task,
            tuple(Path(f"{b}-{i}") for i in range(n_images)),
            tuple(" ".join(rng.choice(words, size=2 + t + b)) for t in range(n_texts)),
        )
        for b in range(batch_size)
    ]
    images = [
        [Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)) for _ in range(n_images)]
        for _ in range(batch_size)
    ]
    return examples, images


def tiny_teacher(task: str, seed: int = 0) -> FusionTeacher:
    torch.manual_seed(seed)
    return build_teacher(TeacherConfig(kind="fusion", tiny=TinyTeacherConfig(num_labels=5)), task=task)


@pytest.mark.parametrize("task", sorted(LAYOUT))
def test_outputs_on_a_batch_of_each_task(task: str) -> None:
    teacher = tiny_teacher(task)
    examples, images = make_batch(task)
    inputs = teacher.processor(examples, images)
    out = teacher(inputs)
    views = 2 * max(LAYOUT[task])
    length = inputs.input_ids.shape[1]
    assert out.logits.shape == (2, CLASSES[task])
    ca = out.cross_attention
    assert ca.text_to_image.shape == (views, 2, length, 16)  # 2 heads, 32 px / patch 8 = 16 patches
    assert ca.image_to_text.shape == (views, 2, 16, length)
    torch.testing.assert_close(ca.text_to_image.sum(-1), torch.ones(views, 2, length))
    # Image queries spread over real text keys only: padded keys get exactly 0.
    torch.testing.assert_close(ca.image_to_text.sum(-1), torch.ones(views, 2, 16))
    assert (ca.image_to_text * ~ca.text_mask[:, None, None, :]).abs().sum() == 0
    if task == "vcr":
        torch.testing.assert_close(out.matching_logits, out.logits.reshape(-1))
    else:
        assert out.matching_logits is None
    assert not any(p.requires_grad for p in teacher.parameters())


def test_logits_are_the_student_modules_in_eval_mode() -> None:
    """Same weights, same numbers: the teacher runs the student's code path, without dropout."""
    teacher = tiny_teacher("snli_ve")
    student = FusionStudent(teacher.student.model, "snli_ve").eval()
    examples, images = make_batch("snli_ve")
    inputs = teacher.processor(examples, images)
    torch.testing.assert_close(teacher(inputs).logits, student(inputs).logits)
    teacher.train()
    assert not any(m.training for m in teacher.modules())


@pytest.mark.parametrize("task", ["vqa", "nlvr2"])
def test_save_reload_round_trip(task: str, tmp_path: Path) -> None:
    teacher = tiny_teacher(task)
    teacher.save_pretrained(tmp_path / "vilt")
    again = FusionTeacher.from_pretrained(tmp_path / "vilt", task=task)
    assert again.fingerprint() == teacher.fingerprint()
    examples, images = make_batch(task)
    a, b = teacher.encode(examples, images), again.encode(examples, images)
    torch.testing.assert_close(a.logits, b.logits)
    torch.testing.assert_close(a.cross_attention.text_to_image, b.cross_attention.text_to_image)
    if task == "vqa":
        assert again.student.config.id2label == {i: f"answer {i}" for i in range(5)}


def test_loads_a_plain_hugging_face_vilt_vqa_directory(tmp_path: Path) -> None:
    """A directory as dandelin/vilt-b32-finetuned-vqa is laid out: ViltForQuestionAnswering weights,
    labels in the config, tokenizer and preprocessor config."""
    teacher = tiny_teacher("vqa")
    config = ViltConfig(
        **{
            k: v
            for k, v in teacher.student.config.to_dict().items()
            if k not in ("architectures", "transformers_version")
        }
    )
    torch.manual_seed(3)
    hf = ViltForQuestionAnswering(config)
    hf.save_pretrained(tmp_path / "hf")
    save_processor(teacher.processor, tmp_path / "hf")
    loaded = FusionTeacher.from_pretrained(tmp_path / "hf", task="vqa")
    torch.testing.assert_close(loaded.student.model.classifier[0].weight, hf.classifier[0].weight)
    assert loaded.fingerprint() != teacher.fingerprint()  # other weights
    examples, images = make_batch("vqa")
    assert loaded.encode(examples, images).logits.shape == (2, 5)


def test_refuses_a_checkpoint_of_another_task(tmp_path: Path) -> None:
    tiny_teacher("vqa").save_pretrained(tmp_path / "vqa")
    with pytest.raises(ConfigError, match="not the snli_ve head ViltForImagesAndTextClassification"):
        FusionTeacher.from_pretrained(tmp_path / "vqa", task="snli_ve")
    tiny_teacher("nlvr2").save_pretrained(tmp_path / "nlvr2")  # same class, 2 labels on 2 images
    with pytest.raises(ConfigError, match="num_labels=2, the snli_ve head needs 3"):
        FusionTeacher.from_pretrained(tmp_path / "nlvr2", task="snli_ve")


def test_loads_a_student_saved_by_a_vldistill_run(tmp_path: Path) -> None:
    """``save_student`` writes weights and vldistill_student.json but no tokenizer: the teacher runs
    the saved student's weights with the tiny students' processor (MiniLM WordPiece, 0.5 mean/std)."""
    cfg = StudentConfig(hidden_size=32, num_layers=1, image_size=32, patch_size=8)
    torch.manual_seed(0)
    student = build_student(cfg, "snli_ve", 3).eval()
    save_student(student, tmp_path / "student")
    teacher = FusionTeacher.from_pretrained(tmp_path / "student", task="snli_ve")
    assert teacher.processor.fingerprint() == student_processor(cfg).fingerprint()
    examples, images = make_batch("snli_ve")
    inputs = teacher.processor(examples, images)
    torch.testing.assert_close(teacher(inputs).logits, student(inputs).logits)
    with pytest.raises(ConfigError, match="not a fusion student of nlvr2"):
        FusionTeacher.from_pretrained(tmp_path / "student", task="nlvr2")


def test_refuses_a_checkpoint_whose_head_weights_are_missing(tmp_path: Path) -> None:
    """A student may get a new head; a teacher may not (it would teach noise)."""
    tiny_teacher("vqa").save_pretrained(tmp_path / "vqa")
    weights = load_file(tmp_path / "vqa" / "model.safetensors")
    del weights["classifier.3.weight"]
    save_file(weights, tmp_path / "vqa" / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ConfigError) as err:
        FusionTeacher.from_pretrained(tmp_path / "vqa", task="vqa")
    assert str(err.value) == (
        f"fusion teacher '{tmp_path / 'vqa'}' lacks 1 weights (classifier.3.weight), which would start random; "
        "fix: give a ViLT checkpoint fine-tuned on vqa, with all its weights"
    )
