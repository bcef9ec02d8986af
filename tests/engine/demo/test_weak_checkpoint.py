"""The second bundled checkpoint: same architecture, its own name, answers worse than main.

It exists so a fresh `make demo` has two checkpoints answering the same questions with real
disagreements; these tests hold it to that, measured rather than assumed.
"""

import json

import pytest

from engine.demo.checkpoints import DEMO_CHECKPOINTS
from engine.demo.evaluate import teacher_forced_accuracy
from engine.demo.train import RECIPES
from store import TraceQuery, open_store
from store.dataset import accuracy_by_checkpoint, pairs_page

MAIN, WEAK = DEMO_CHECKPOINTS["main"], DEMO_CHECKPOINTS["weak"]


@pytest.fixture(scope="module")
def both_loaded():
    from engine.loading import load_model

    return load_model(str(MAIN.folder)), load_model(str(WEAK.folder))


def _config(folder):
    config = json.loads((folder / "config.json").read_text())
    return {k: v for k, v in config.items() if k != "_name_or_path"}


def test_same_architecture_small_and_reproducible_by_its_recipe():
    assert _config(WEAK.folder) == _config(MAIN.folder)
    assert sum(f.stat().st_size for f in WEAK.folder.iterdir()) < 10 * 2**20
    recipe = json.loads((WEAK.folder / "recipe.json").read_text())
    assert recipe["stop_after"] == RECIPES["weak"].stop_after < recipe["joint_steps"]


def test_named_apart(both_loaded):
    main, weak = both_loaded
    assert (main.model_id, weak.model_id) == (MAIN.model_id, WEAK.model_id)
    assert main.revision != weak.revision  # weights hashes


def test_answers_worse_than_main_on_the_same_held_out_questions(both_loaded):
    scores = [teacher_forced_accuracy(m.model, m.processor, per_kind=20) for m in both_loaded]
    print(scores)
    assert scores[1]["overall"] < scores[0]["overall"]
    assert scores[1]["overall"] > 0.3  # still a model that answers, not noise


def test_demo_record_on_both_writes_pairs(paired_demo_store):
    with open_store(paired_demo_store) as store:
        query = TraceQuery(tag="demo")
        assert [r.checkpoint.model_id for r in accuracy_by_checkpoint(store, query)] == [
            MAIN.model_id,
            WEAK.model_id,
        ]
        pairs = pairs_page(store, query, limit=10)
        assert pairs.total == 5
        for pair in pairs.items:
            assert {pair.left.checkpoint.model_id, pair.right.checkpoint.model_id} == {
                MAIN.model_id,
                WEAK.model_id,
            }
            left, right = store.get(pair.left.trace_id), store.get(pair.right.trace_id)
            assert (left.image_sha256, left.prompt) == (right.image_sha256, right.prompt)
            assert left.reference_answer == right.reference_answer
            assert pair.left.answer.strip() and pair.right.answer.strip()


def test_a_snapshot_is_what_its_recipe_reproduces(tmp_path):
    """The weak recipe's stop point was picked from one run's snapshots: a snapshot must hold
    the weights that training with its recorded recipe (stop_after) gives from scratch."""
    from dataclasses import replace

    from safetensors.numpy import load_file

    from engine.demo.train import Recipe, train

    tiny = Recipe(batch_size=2, vision_steps=2, joint_steps=6, warmup_steps=1)
    train(replace(tiny, stop_after=4), tmp_path / "run", log=lambda _: None, snapshots={2, 3})
    snapshot = tmp_path / "run" / "step-3"
    recorded = json.loads((snapshot / "recipe.json").read_text())
    assert recorded["stop_after"] == 3
    again = train(Recipe(**recorded), tmp_path / "again", log=lambda _: None)
    first, second = (load_file(f / "model.safetensors") for f in (snapshot, again))
    assert first.keys() == second.keys()
    assert all((first[k] == second[k]).all() for k in first)
    final = load_file(tmp_path / "run" / "model.safetensors")
    assert any((final[k] != first[k]).any() for k in first)  # training went on after step 3
