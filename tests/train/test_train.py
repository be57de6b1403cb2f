"""Training path: loss goes down, only assistant tokens carry loss, resume continues from the saved step."""
from __future__ import annotations

import json

import pytest
import torch
from train_helpers import tiny_config

from videoneva.config import load_config
from videoneva.errors import ConfigError
from videoneva.train.data import IGNORE_INDEX
from videoneva.train.loop import TrainConfig, train


@pytest.fixture()
def conv_data(tmp_path, media_dir):
    """A few LLaVA conversation records over real media (video and image)."""
    recs = []
    for i in range(6):
        media = {"video": "clip.mp4"} if i % 3 else {"image": "still.png"}
        tok = "<video>" if "video" in media else "<image>"
        recs.append({"id": str(i), **media, "conversations": [
            {"from": "human", "value": f"{tok}\nWhat color is the shape?"},
            {"from": "gpt", "value": ["red", "blue", "green"][i % 3]},
            {"from": "human", "value": "How many shapes are there?"},
            {"from": "gpt", "value": str(1 + i % 2)},
        ]})
    p = tmp_path / "train.json"
    p.write_text(json.dumps(recs))
    return p


_cfg = tiny_config


def test_short_run_lowers_the_loss_and_saves_a_loadable_checkpoint(conv_data, media_dir, tmp_path):
    from videoneva.checkpoint.native import load_checkpoint

    s = train(_cfg(conv_data, media_dir, tmp_path / "run", "train.max_steps=30"))
    losses = json.loads((tmp_path / "run" / "train_summary.json").read_text())["losses"]
    assert len(losses) == 30
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5, losses
    ck = load_checkpoint(s["final"])
    assert ck.settings.num_frames == 2 and ck.settings.frame_token_pool == 4


def test_labels_cover_only_assistant_turns(conv_data, media_dir, tmp_path):
    from videoneva import prompts
    from videoneva.train.data import ConversationDataset, load_conversations
    from videoneva.media.settings import MediaSettings
    from videoneva.media.sources import MediaRoot
    from videoneva.tokenizer import train_tokenizer

    recs = load_conversations(conv_data)
    tok = train_tokenizer(["red blue green one two What color is the shape? How many shapes are there?"] * 5,
                          vocab_size=300, special_tokens=prompts.special_tokens("nv_steerlm"))
    ds = ConversationDataset(recs, tok, "nv_steerlm", MediaSettings(num_frames=2, image_size=56, crop_size=56),
                             MediaRoot(media_dir), tokens_per_frame=4, cache_media=False)
    ex = ds[1]
    assert len(ex.labels) == len(ex.input_ids)
    assert ex.pixel_values.shape[0] == 2
    image_id = tok.convert_tokens_to_ids("<image>")
    assert ex.input_ids.count(image_id) == 2 * 4
    labelled = tok.decode([t for t, lab in zip(ex.input_ids, ex.labels) if lab != IGNORE_INDEX])
    assert "blue" in labelled and "2" in labelled
    assert "What color" not in labelled and "How many" not in labelled and "System" not in labelled
    assert all(lab == IGNORE_INDEX for t, lab in zip(ex.input_ids, ex.labels) if t == image_id)


def test_resume_continues_from_the_saved_step(conv_data, media_dir, tmp_path):
    full = train(_cfg(conv_data, media_dir, tmp_path / "full", "train.max_steps=6"))
    train(_cfg(conv_data, media_dir, tmp_path / "part", "train.max_steps=3"))
    resumed = train(_cfg(conv_data, media_dir, tmp_path / "part", "train.max_steps=6", "resume=true"))
    assert resumed["steps"] == 6
    a = json.loads((tmp_path / "full" / "train_summary.json").read_text())["losses"]
    b = json.loads((tmp_path / "part" / "train_summary.json").read_text())["losses"]
    assert len(b) == 6
    torch.testing.assert_close(torch.tensor(b), torch.tensor(a), rtol=1e-4, atol=1e-5)
    assert full["steps"] == 6


def test_lora_finetune_from_a_checkpoint(conv_data, media_dir, tmp_path, tiny_checkpoint):
    from videoneva.checkpoint.native import load_checkpoint

    s = train(_cfg(conv_data, media_dir, tmp_path / "lora", f"init={tiny_checkpoint}", "train.lora.enable=true",
                   "train.max_steps=3", "train.freeze_vision=true", "data.frame_token_pool=1"))
    ck = load_checkpoint(s["final"])
    assert not any("lora" in k for k in ck.model.state_dict())
    base = load_checkpoint(tiny_checkpoint).model.state_dict()
    after = ck.model.state_dict()
    key = "model.vision_tower.embeddings.patch_embedding.weight"
    assert torch.equal(base[key], after[key]), "frozen vision tower must not change"
    q = next(k for k in after if "language_model" in k and k.endswith("layers.0.self_attn.q_proj.weight"))
    assert not torch.equal(base[q], after[q]), "merged LoRA must change the adapted weights"


def test_bad_train_config():
    with pytest.raises(ConfigError, match="stage"):
        load_config(TrainConfig, ["stage=warmup", "output_dir=x", "data.data_path=y"])
    with pytest.raises(ConfigError, match="output_dir"):
        load_config(TrainConfig, ["data.data_path=y"])


def test_held_out_score_equals_greedy_decoding(conv_data, media_dir, tmp_path):
    """train's held-out exact match (teacher-forced) says right exactly where greedy decoding gives the answer."""
    from videoneva.checkpoint.native import load_checkpoint
    from videoneva.media.settings import MediaSettings
    from videoneva.media.sources import MediaRoot
    from videoneva.model.vision import VisionFeatures
    from videoneva.train.data import ConversationDataset, collate, load_conversations
    from videoneva.train.evaluate import embed_batch, exact_match

    held = [{**r, "conversations": r["conversations"][:2]} for r in json.loads(conv_data.read_text())]
    held_path = tmp_path / "held.json"
    held_path.write_text(json.dumps(held))
    s = train(_cfg(conv_data, media_dir, tmp_path / "run", "train.max_steps=40", f"data.eval_data_path={held_path}",
                   "eval_every=20"))
    assert [e["step"] for e in s["eval"]] == [20, 40] and all(e["n"] == 6 for e in s["eval"])

    ck = load_checkpoint(s["final"])
    model, tok = ck.model.eval(), ck.tokenizer
    vision = VisionFeatures(model, ck.settings.frame_token_pool)
    size = model.config.vision_config.image_size
    media = MediaSettings(media_type="video", num_frames=2, image_size=size, crop_size=size)
    ds = ConversationDataset(load_conversations(held_path), tok, ck.settings.conv_template, media,
                             MediaRoot(media_dir), vision.tokens, False)
    scored = exact_match(model, vision, ds, tok.pad_token_id)
    assert s["eval"][-1]["exact_match"] == pytest.approx(sum(scored) / len(scored))
    for i, right in enumerate(scored):
        ex = ds[i]
        start = next(j for j, lab in enumerate(ex.labels) if lab != IGNORE_INDEX)
        want = ex.input_ids[start:]
        ids = list(ex.input_ids[:start])
        with torch.no_grad():
            for _ in want:  # greedy, one token at a time, from the prompt alone
                batch = collate([type(ex)(ids, ids, ex.pixel_values)], tok.pad_token_id)
                logits = model(inputs_embeds=embed_batch(model, vision, batch)).logits
                ids.append(int(logits[0, -1].argmax()))
        assert (ids[start:] == want) == right, (i, ids[start:], want)


def test_isolated_turns_never_see_an_earlier_answer(conv_data, media_dir, tmp_path, tiny_checkpoint):
    """data.isolate_turns: a later turn's loss does not depend on earlier answers; the first turn's is the
    single-question record's; without it, the earlier answer does leak."""
    from videoneva.checkpoint.native import load_checkpoint
    from videoneva.media.settings import MediaSettings
    from videoneva.media.sources import MediaRoot
    from videoneva.model.vision import VisionFeatures
    from videoneva.train.data import ConversationDataset, collate
    from videoneva.train.step import forward_loss

    ck = load_checkpoint(tiny_checkpoint)
    model, tok = ck.model.eval(), ck.tokenizer
    vision = VisionFeatures(model, ck.settings.frame_token_pool)
    size = model.config.vision_config.image_size
    media = MediaSettings(media_type="video", num_frames=2, image_size=size, crop_size=size)
    rec = json.loads(conv_data.read_text())[1]
    other = json.loads(json.dumps(rec))
    other["conversations"][1]["value"] = "a much longer first answer"
    first = {**rec, "conversations": rec["conversations"][:2]}

    def ds(recs):
        return ConversationDataset(recs, tok, ck.settings.conv_template, media, MediaRoot(media_dir), vision.tokens, False)

    def turn_losses(r, isolate):
        ex = ds([r])[0]
        batch = collate([ex], tok.pad_token_id, isolate)
        out = []
        for k in (1, 2):  # the loss of answer k alone
            lab = torch.tensor(ex.labels)
            keep = torch.tensor([s == k for s in ex.segments])
            batch["labels"] = torch.where(keep, lab, torch.full_like(lab, IGNORE_INDEX))[None]
            with torch.no_grad():
                out.append(float(forward_loss(model, vision, batch)))
        return out

    a1, a2 = turn_losses(rec, True)
    b1, b2 = turn_losses(other, True)
    assert a2 == pytest.approx(b2, abs=1e-5), "turn 2 must not see turn 1's answer"
    assert a1 != pytest.approx(b1, abs=1e-3)
    single = ds([first])[0]
    with torch.no_grad():
        want = float(forward_loss(model, vision, collate([single], tok.pad_token_id)))
    assert a1 == pytest.approx(want, abs=1e-5), "turn 1 trains exactly like the single-question record"
    _, c2 = turn_losses(rec, False)
    _, d2 = turn_losses(other, False)
    assert c2 != pytest.approx(d2, abs=1e-4), "without isolation the earlier answer is visible"
    # a short isolated run trains
    s = train(_cfg(conv_data, media_dir, tmp_path / "run", "train.max_steps=20", "data.isolate_turns=true"))
    assert s["last_loss"] < s["first_loss"]


def test_loss_on_answer_positions_equals_the_models_own_loss(tiny_checkpoint, conv_data, media_dir):
    """forward_loss runs the LM head on the answer positions only: the same loss as labels= on every position."""
    from videoneva.checkpoint.native import load_checkpoint
    from videoneva.media.settings import MediaSettings
    from videoneva.media.sources import MediaRoot
    from videoneva.model.vision import VisionFeatures
    from videoneva.train.data import ConversationDataset, collate
    from videoneva.train.evaluate import embed_batch
    from videoneva.train.step import forward_loss

    ck = load_checkpoint(tiny_checkpoint)
    model, tok = ck.model.eval(), ck.tokenizer
    vision = VisionFeatures(model, ck.settings.frame_token_pool)
    size = model.config.vision_config.image_size
    media = MediaSettings(media_type="video", num_frames=2, image_size=size, crop_size=size)
    ds = ConversationDataset(json.loads(conv_data.read_text()), tok, ck.settings.conv_template, media,
                             MediaRoot(media_dir), vision.tokens, False)
    batch = collate([ds[i] for i in range(len(ds))], tok.pad_token_id)  # padded rows of unequal length
    assert (batch["attention_mask"] == 0).any()
    with torch.no_grad():
        want = model(inputs_embeds=embed_batch(model, vision, batch), attention_mask=batch["attention_mask"],
                     labels=batch["labels"]).loss
        got = forward_loss(model, vision, batch)
    assert float(got) == pytest.approx(float(want), rel=1e-5)
    model.train()
    forward_loss(model, vision, batch).backward()  # gradients reach the LLM through the selected rows
    assert model.lm_head.weight.grad is not None and model.model.language_model.layers[0].mlp.up_proj.weight.grad.abs().sum() > 0
