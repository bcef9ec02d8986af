"""The shipped checkpoint loads like a hub model and answers from the image."""

import pytest
from transformers import AutoModelForImageTextToText, AutoProcessor, LlavaForConditionalGeneration

from engine.demo.evaluate import generation_accuracy, teacher_forced_accuracy
from engine.demo.world import QUESTION_KINDS

OVERALL_BAR, PER_KIND_BAR = 0.90, 0.80


@pytest.fixture(scope="module")
def auto_loaded(demo_checkpoint):
    processor = AutoProcessor.from_pretrained(demo_checkpoint)
    model = AutoModelForImageTextToText.from_pretrained(demo_checkpoint)
    return model.eval(), processor


def test_loads_through_auto_classes(auto_loaded, demo_checkpoint):
    model, processor = auto_loaded
    assert isinstance(model, LlavaForConditionalGeneration)
    assert processor.tokenizer.chat_template is not None
    assert sum(f.stat().st_size for f in demo_checkpoint.iterdir()) < 50 * 2**20


def test_generate_meets_the_accuracy_bar(auto_loaded):
    model, processor = auto_loaded
    table = generation_accuracy(model, processor, per_kind=24)  # 120 held-out questions
    print({kind: round(row.accuracy, 3) for kind, row in table.items()})
    assert table["overall"].accuracy >= OVERALL_BAR
    for kind in QUESTION_KINDS:
        assert table[kind].accuracy >= PER_KIND_BAR, kind


@pytest.mark.slow
def test_teacher_forced_accuracy_on_600_questions(auto_loaded):
    model, processor = auto_loaded
    table = teacher_forced_accuracy(model, processor, per_kind=120)
    print(table)
    assert table["overall"] >= OVERALL_BAR
    assert all(table[kind] >= PER_KIND_BAR for kind in QUESTION_KINDS)
