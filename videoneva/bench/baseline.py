"""The baseline: what a competent user writes without videoneva, to compare the pipeline and the server against.

Per request, one at a time, as NeMo's own video loader does: decord opens the video and reads only
the N sampled frames by random access (`get_batch` on np.linspace indices), the transformers
`LlavaProcessor` (CLIPImageProcessor + the tokenizer, each `<image>` expanded to the frame's
tokens) prepares the inputs, and `LlavaForConditionalGeneration.generate` answers. Nothing from
videoneva's runtime is used except rendering the prompt text, so that both sides get the same
prompt. `decode="whole"` decodes every frame and picks the N afterwards (a weaker baseline, kept
as an extra row).

A checkpoint with frame_token_pool > 1 (the demo model's 2×2 pooling) has no transformers
equivalent, so there the user writes the five lines of tower → pool → projector and calls
`generate(inputs_embeds=…)`; with pool 1 it is the plain `generate(input_ids, pixel_values)`.
"""
from __future__ import annotations

import json
import math
import threading
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from transformers.generation.streamers import BaseStreamer

from videoneva.bench.loadgen import GenSettings, Job


class _TimingStreamer(BaseStreamer):
    """Calls on_token(n) for each generated step; generate() first puts the prompt, which is skipped."""

    def __init__(self, on_token: Callable[[int], None]):
        self.on_token, self.prompt_seen = on_token, False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        self.on_token(int(value.numel()))

    def end(self) -> None:
        pass


class BaselineTarget:
    """A transformers Llava checkpoint answered the plain way (see the module docstring).

    Args:
        checkpoint: a native videoneva checkpoint dir (a transformers Llava dir + videoneva.json).
        media_root: folder the jobs' video paths are relative to.
        gen: decoding settings (greedy; fixed length when ignore_eos).
        insert_media_token: left | right (where <video> goes when the question has none).
        decode: "sampled" (only the N frames, by random access) | "whole" (every frame, then pick N).
    """

    name = "baseline"

    def __init__(self, checkpoint: str | Path, media_root: str | Path, gen: GenSettings,
                 insert_media_token: Optional[str] = "left", decode: str = "sampled"):
        if decode not in ("sampled", "whole"):
            raise ValueError(f"decode={decode!r}: choose sampled or whole")
        self.decode = decode
        self.name = "baseline" if decode == "sampled" else "baseline_whole_decode"
        from transformers import AutoTokenizer, CLIPImageProcessor, LlavaForConditionalGeneration, LlavaProcessor

        ckpt = Path(checkpoint)
        s = json.loads((ckpt / "videoneva.json").read_text())
        self.num_frames, self.template, self.pool = s["num_frames"], s["conv_template"], s["frame_token_pool"]
        self.model = LlavaForConditionalGeneration.from_pretrained(ckpt, dtype=torch.float32).eval()
        tok = AutoTokenizer.from_pretrained(ckpt)
        vc = self.model.config.vision_config
        image = CLIPImageProcessor(size={"shortest_edge": vc.image_size},
                                   crop_size={"height": vc.image_size, "width": vc.image_size},
                                   image_mean=list(s["image_mean"]), image_std=list(s["image_std"]))
        # Pooling p×p makes a frame (grid/p)² tokens: the processor's token count with patch p·patch.
        self.processor = LlavaProcessor(image_processor=image, tokenizer=tok, patch_size=vc.patch_size * self.pool,
                                        vision_feature_select_strategy="default", num_additional_image_tokens=1)
        self.image_token_id = self.model.config.image_token_id
        # the template's end strings that are single tokens stop generation, as NeMo's end_strings do
        from videoneva.prompts import stop_strings

        ends = [tok.convert_tokens_to_ids(e) for e in stop_strings(self.template) if e in tok.get_vocab()]
        self.stop_ids = sorted({*ends, *([tok.eos_token_id] if tok.eos_token_id is not None else [])})
        self.root, self.gen, self.insert = Path(media_root), gen, insert_media_token
        self._lock = threading.Lock()  # one model, one request at a time

    def prompt(self, text: str) -> str:
        from videoneva.prompts import render_prompt

        return render_prompt(self.template, text, "video", self.insert).replace("<video>", "<image>" * self.num_frames)

    def frames(self, path: Path) -> list[np.ndarray]:
        import decord

        vr = decord.VideoReader(str(path))
        idx = np.linspace(0, len(vr) - 1, min(len(vr), self.num_frames), dtype=int)
        if self.decode == "whole":
            video = vr.get_batch(list(range(len(vr)))).asnumpy()  # (N, H, W, 3): every frame decoded
            picked = [video[i] for i in idx]
        else:  # NeMo's loader: only the sampled frames, by random access
            picked = list(vr.get_batch(idx.tolist()).asnumpy())
        return picked + [picked[-1]] * (self.num_frames - len(picked))

    @torch.inference_mode()
    def send(self, job: Job, on_token: Callable[[int], None]) -> list[int]:
        g = self.gen
        with self._lock:
            inputs = self.processor(images=self.frames(self.root / job.media_path), text=self.prompt(job.text),
                                    return_tensors="pt", add_special_tokens=False)
            kwargs = dict(max_new_tokens=g.tokens_to_generate, min_new_tokens=g.min_tokens or None,
                          do_sample=not g.greedy, repetition_penalty=g.repetition_penalty,
                          eos_token_id=self.stop_ids or None,
                          streamer=_TimingStreamer(on_token))
            ids, mask = inputs["input_ids"], inputs["attention_mask"]
            if self.pool == 1:
                out = self.model.generate(input_ids=ids, attention_mask=mask, pixel_values=inputs["pixel_values"],
                                          **kwargs)
                return out[0, ids.shape[1]:].tolist()
            embeds = self.pooled_embeds(ids, inputs["pixel_values"])
            return self.model.generate(inputs_embeds=embeds, attention_mask=mask, **kwargs)[0].tolist()

    def pooled_embeds(self, ids: torch.Tensor, pixel_values: torch.Tensor) -> torch.Tensor:
        """Prompt embeddings [1, L, D] with p×p-pooled frame features where the image tokens are."""
        m = self.model.model
        h = m.vision_tower(pixel_values, output_hidden_states=True).hidden_states[-2][:, 1:]  # (F, S, Dv)
        f, s, d = h.shape
        g = math.isqrt(s)
        h = torch.nn.functional.avg_pool2d(h.transpose(1, 2).reshape(f, d, g, g), self.pool)  # (F, Dv, g/p, g/p)
        feats = m.multi_modal_projector(h.flatten(2).transpose(1, 2))  # (F, T, D)
        embeds = self.model.get_input_embeddings()(ids)  # (1, L, D)
        embeds[ids == self.image_token_id] = feats.reshape(-1, feats.shape[-1])
        return embeds
