"""ImageReward adapter on a tiny random checkpoint in the published key layout, checked against plain torch math."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from flowrl.rewards import make_reward
from flowrl.rewards.preprocess import clip_preprocess

# The published reward statistics, as written in THUDM/ImageReward (ImageReward/ImageReward.py).
MEAN, STD = 0.16717362830052426, 1.0333394966054072
WORDS = ["a", "photo", "of", "red", "blue", "cat", "dog", "on", "the", "table", "two", "cats"]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
VIS = dict(width=128, depth=2, heads=2, mlp=256, patch=16, size=224)  # 64-wide heads, as in BLIP's ViTs
MED = {
    "architectures": ["BertModel"], "attention_probs_dropout_prob": 0.1, "hidden_act": "gelu", "hidden_size": 32,
    "initializer_range": 0.02, "intermediate_size": 64, "layer_norm_eps": 1e-12, "max_position_embeddings": 64,
    "model_type": "bert", "num_attention_heads": 2, "num_hidden_layers": 2, "pad_token_id": 0, "type_vocab_size": 2,
    "vocab_size": len(VOCAB) + 2,  # + [DEC], [ENC]
    "encoder_width": 768,  # as in the repo's med_config.json: BLIP replaces it with the ViT width
    "add_cross_attention": True,
}  # fmt: skip
HEAD_SIZES = [(64, 32), (16, 64), (8, 16), (4, 8), (1, 4)]  # published: 768 → 1024 → 128 → 64 → 16 → 1


def random_checkpoint(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights under the published ``ImageReward.pt`` key names (timm ViT, med BERT, MLP)."""
    g = torch.Generator().manual_seed(seed)

    def linear(prefix: str, out_dim: int, in_dim: int) -> dict[str, torch.Tensor]:
        return {f"{prefix}.weight": torch.randn(out_dim, in_dim, generator=g) / in_dim**0.5,
                f"{prefix}.bias": 0.1 * torch.randn(out_dim, generator=g)}  # fmt: skip

    def norm(prefix: str, dim: int) -> dict[str, torch.Tensor]:
        return {f"{prefix}.weight": 1 + 0.1 * torch.randn(dim, generator=g),
                f"{prefix}.bias": 0.1 * torch.randn(dim, generator=g)}  # fmt: skip

    w, p, grid = VIS["width"], VIS["patch"], VIS["size"] // VIS["patch"]
    v = "blip.visual_encoder."
    s = {v + "cls_token": 0.1 * torch.randn(1, 1, w, generator=g),
         v + "pos_embed": 0.1 * torch.randn(1, grid * grid + 1, w, generator=g),
         v + "patch_embed.proj.weight": torch.randn(w, 3, p, p, generator=g) / (3 * p * p) ** 0.5,
         v + "patch_embed.proj.bias": 0.1 * torch.randn(w, generator=g)}  # fmt: skip
    for i in range(VIS["depth"]):
        b = f"{v}blocks.{i}."
        s |= norm(b + "norm1", w) | linear(b + "attn.qkv", 3 * w, w) | linear(b + "attn.proj", w, w)
        s |= norm(b + "norm2", w) | linear(b + "mlp.fc1", VIS["mlp"], w) | linear(b + "mlp.fc2", w, VIS["mlp"])
    s |= norm(v + "norm", w)
    t, h = "blip.text_encoder.", MED["hidden_size"]
    s[t + "embeddings.word_embeddings.weight"] = torch.randn(MED["vocab_size"], h, generator=g)
    s[t + "embeddings.position_embeddings.weight"] = torch.randn(MED["max_position_embeddings"], h, generator=g)
    s |= norm(t + "embeddings.LayerNorm", h)
    for i in range(MED["num_hidden_layers"]):
        b = f"{t}encoder.layer.{i}."
        for att, kv_dim in (("attention", h), ("crossattention", w)):
            s |= linear(b + att + ".self.query", h, h) | linear(b + att + ".self.key", h, kv_dim)
            s |= linear(b + att + ".self.value", h, kv_dim) | linear(b + att + ".output.dense", h, h)
            s |= norm(b + att + ".output.LayerNorm", h)
        s |= linear(b + "intermediate.dense", MED["intermediate_size"], h)
        s |= linear(b + "output.dense", h, MED["intermediate_size"]) | norm(b + "output.LayerNorm", h)
    for i, (o, n) in zip((0, 2, 4, 6, 7), HEAD_SIZES, strict=True):
        s |= linear(f"mlp.layers.{i}", o, n)
    # saved alongside in the real file, unused by the score
    s[t + "embeddings.position_ids"] = torch.arange(MED["max_position_embeddings"])[None]
    s |= linear("blip.vision_proj", 16, w) | linear("blip.text_proj", 16, h)
    return s


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagereward")
    state = random_checkpoint()
    torch.save(state, root / "ImageReward.pt")
    (root / "med_config.json").write_text(json.dumps(MED))
    (root / "tokenizer").mkdir()
    (root / "tokenizer" / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    return {"root": root, "state": state, "options": dict(checkpoint=str(root / "ImageReward.pt"),
            med_config=str(root / "med_config.json"), tokenizer=str(root / "tokenizer"))}  # fmt: skip


def hand_tokens(prompt: str, length: int = 35) -> tuple[torch.Tensor, torch.Tensor]:
    """[CLS] words [SEP], lower-cased, truncated and padded to ``length`` (whole-word vocabulary only)."""
    ids = [VOCAB.index("[CLS]"), *(VOCAB.index(w) for w in prompt.lower().split())][: length - 1]
    ids.append(VOCAB.index("[SEP]"))
    mask = [1] * len(ids) + [0] * (length - len(ids))
    return torch.tensor(ids + [0] * (length - len(ids))), torch.tensor(mask)


def layer_norm(x, s, name, eps):
    return F.layer_norm(x, x.shape[-1:], s[name + ".weight"], s[name + ".bias"], eps)


def affine(x, s, name):
    return x @ s[name + ".weight"].T + s[name + ".bias"]


def attention(q, k, v, heads, bias=None):
    """Scaled dot-product attention on ``[B, L, D]`` inputs split into ``heads``; ``bias`` added to the logits."""
    split = lambda x: x.view(x.shape[0], x.shape[1], heads, -1).transpose(1, 2)  # noqa: E731
    q, k, v = split(q), split(k), split(v)
    logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    probs = (logits if bias is None else logits + bias).softmax(-1)
    return (probs @ v).transpose(1, 2).flatten(2)


def reference_score(s, pixels, ids, mask):
    """The ImageReward score by hand from the raw state dict: ViT → cross-attending BERT → MLP → standardise."""
    v, t = "blip.visual_encoder.", "blip.text_encoder."
    x = F.conv2d(pixels, s[v + "patch_embed.proj.weight"], s[v + "patch_embed.proj.bias"], stride=VIS["patch"])
    x = torch.cat([s[v + "cls_token"].expand(len(x), -1, -1), x.flatten(2).transpose(1, 2)], 1) + s[v + "pos_embed"]
    for i in range(VIS["depth"]):
        b = f"{v}blocks.{i}."
        q, k, val = affine(layer_norm(x, s, b + "norm1", 1e-6), s, b + "attn.qkv").chunk(3, -1)
        x = x + affine(attention(q, k, val, VIS["heads"]), s, b + "attn.proj")
        x = x + affine(F.gelu(affine(layer_norm(x, s, b + "norm2", 1e-6), s, b + "mlp.fc1")), s, b + "mlp.fc2")
    image = layer_norm(x, s, v + "norm", 1e-6)

    eps, heads = MED["layer_norm_eps"], MED["num_attention_heads"]
    y = (
        s[t + "embeddings.word_embeddings.weight"][ids]
        + s[t + "embeddings.position_embeddings.weight"][: ids.shape[1]]
    )
    y = layer_norm(y, s, t + "embeddings.LayerNorm", eps)
    pad_bias = (1.0 - mask[:, None, None, :].float()) * -10000.0  # med.py's additive padding mask
    for i in range(MED["num_hidden_layers"]):
        b = f"{t}encoder.layer.{i}."
        for att, kv, bias in (("attention", y, pad_bias), ("crossattention", image, None)):
            a = b + att
            ctx = attention(affine(y, s, a + ".self.query"), affine(kv, s, a + ".self.key"),
                            affine(kv, s, a + ".self.value"), heads, bias)  # fmt: skip
            y = layer_norm(affine(ctx, s, a + ".output.dense") + y, s, a + ".output.LayerNorm", eps)
        ffn = affine(F.gelu(affine(y, s, b + "intermediate.dense")), s, b + "output.dense")
        y = layer_norm(ffn + y, s, b + "output.LayerNorm", eps)
    r = y[:, 0]
    for i in (0, 2, 4, 6, 7):
        r = affine(r, s, f"mlp.layers.{i}")
    return (r.squeeze(-1) - MEAN) / STD


PROMPTS = ["a photo of a red cat", "Two blue CATS on the table", " ".join(["dog"] * 40)]  # the last is truncated


def test_tokens_are_bert_uncased_padded_to_35(files):
    reward = make_reward("imagereward", **files["options"])
    tok = reward.tokenizer(PROMPTS, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
    for row, prompt in enumerate(PROMPTS):
        ids, mask = hand_tokens(prompt)
        assert torch.equal(tok.input_ids[row], ids) and torch.equal(tok.attention_mask[row], mask)
    # BLIP's extra tokens follow the vocabulary: [DEC] is the bos token, [ENC] an additional special token
    assert reward.tokenizer.convert_tokens_to_ids(["[DEC]", "[ENC]"]) == [len(VOCAB), len(VOCAB) + 1]
    assert reward.tokenizer.bos_token == "[DEC]"


def test_score_equals_a_hand_written_forward(files):
    reward = make_reward("imagereward", batch_size=2, **files["options"])
    images = torch.rand(3, 3, 96, 128, generator=torch.Generator().manual_seed(1))
    got = reward(images, PROMPTS)["score"]
    ids, mask = (torch.stack(t) for t in zip(*map(hand_tokens, PROMPTS), strict=True))
    with torch.no_grad():
        expected = reference_score(files["state"], clip_preprocess(images, 224), ids, mask)
    assert got.shape == (3,) and torch.isfinite(got).all()
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    # BLIP's ViT uses LayerNorm eps 1e-6; at this size 1e-5 would shift scores by less than the tolerance
    assert {m.eps for m in reward.vision.modules() if isinstance(m, torch.nn.LayerNorm)} == {1e-6}
    # the prompt matters (cross-attention runs text-side) and so does the image
    assert not torch.allclose(reward(images, PROMPTS[::-1])["score"], got)
    assert not torch.allclose(reward(images.flip(0), PROMPTS)["score"], got)


def test_score_is_differentiable_in_the_images(files):
    from reward_grad import assert_image_gradient

    reward = make_reward("imagereward", batch_size=2, **files["options"])
    images = 0.2 + 0.6 * torch.rand(3, 3, 96, 128, generator=torch.Generator().manual_seed(2))
    assert_image_gradient(reward, images, PROMPTS)


def test_preprocessing_matches_the_published_transform(files):
    from torchvision import transforms as T

    published = T.Compose([
        T.Resize(224, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(224), T.ToTensor(),
        T.Normalize((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    ])  # fmt: skip
    reward = make_reward("imagereward", **files["options"])
    # Shapes whose resized long side is a whole number: torchvision truncates a fractional one, clip_preprocess
    # rounds it, which rescales by up to one pixel (a shared-preprocessing difference, not ImageReward's).
    for seed, (h, w) in enumerate([(120, 180), (512, 512), (504, 336)]):
        g = torch.Generator().manual_seed(seed)
        smooth = F.interpolate(torch.rand(2, 3, 8, 8, generator=g), size=(h, w), mode="bilinear")
        images = (smooth * 255).round() / 255  # exactly representable in 8 bits, as PIL sees them
        pil = [Image.fromarray((im.permute(1, 2, 0) * 255).round().byte().numpy()) for im in images]
        theirs = torch.stack([published(im) for im in pil])
        ours = reward.preprocess(images)
        assert ours.shape == theirs.shape == (2, 3, 224, 224)
        assert (ours - theirs).abs().mean() < 0.01  # PIL's and torch's bicubic kernels differ slightly


def test_standardisation_constants_are_applied(files, tmp_path):
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    base = make_reward("imagereward", **files["options"])(images, PROMPTS[:2])["score"]
    # raising the raw reward by one published std raises the score by exactly one
    shifted = dict(files["state"])
    shifted["mlp.layers.7.bias"] = shifted["mlp.layers.7.bias"] + STD
    torch.save(shifted, tmp_path / "shifted.pt")
    options = files["options"] | {"checkpoint": str(tmp_path / "shifted.pt")}
    torch.testing.assert_close(make_reward("imagereward", **options)(images, PROMPTS[:2])["score"], base + 1)
    # statistics stored in the checkpoint replace the published ones
    torch.save(files["state"] | {"mean": torch.tensor(MEAN + 0.5), "std": torch.tensor(STD / 2)}, tmp_path / "s.pt")
    options = files["options"] | {"checkpoint": str(tmp_path / "s.pt")}
    torch.testing.assert_close(make_reward("imagereward", **options)(images, PROMPTS[:2])["score"],
                               2 * base - 0.5 / (STD / 2))  # fmt: skip


def test_missing_and_unexpected_keys_are_named(files, tmp_path):
    key = "blip.text_encoder.encoder.layer.1.crossattention.self.key.weight"
    broken = {k: v for k, v in files["state"].items() if k != key} | {"blip.extra.weight": torch.zeros(1)}
    torch.save(broken, tmp_path / "broken.pt")
    options = files["options"] | {"checkpoint": str(tmp_path / "broken.pt")}
    with pytest.raises(ValueError, match=r"broken\.pt.*missing keys: " + key.replace(".", r"\.")) as err:
        make_reward("imagereward", **options)
    assert "unexpected keys: blip.extra.weight" in str(err.value)
