"""The toy world's learned reward (flowrl.image.toy_reward, rewards/toy_learned.py): the prompt code by hand, the
saved folder round trip, its image gradient, and the committed model's report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from flowrl.image.toy_reward import PROMPT_DIM, ToyRewardModel, load_reward_model, prompt_code, save_reward_model
from flowrl.rewards import REWARDS, make_reward

REPO = Path(__file__).resolve().parents[1]


def test_prompt_code_by_hand():
    code = prompt_code("two red squares left of a blue circle")
    # clause 0: square (1 of circle, square, triangle), red (0 of red, green, blue, yellow), two (1 of a, two, three)
    assert code.nonzero().squeeze(1).tolist() == [1, 3, 8, 10, 15, 17, 20]
    assert PROMPT_DIM == 2 * (3 + 4 + 3) + 4 and code[20] == 1  # "left of", the first relation
    assert prompt_code("a green triangle").nonzero().squeeze(1).tolist() == [2, 4, 7]
    with pytest.raises(ValueError, match="not a toy-world prompt"):
        prompt_code("a purple cat")


def test_saved_folder_round_trip_and_gradient(tmp_path):
    torch.manual_seed(0)
    model = ToyRewardModel(width=4)
    save_reward_model(model, str(tmp_path / "rm"))
    loaded = load_reward_model(str(tmp_path / "rm"))
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    prompts = ["a red circle", "two blue squares", "a green triangle above a yellow square"]
    codes = torch.stack([prompt_code(p) for p in prompts])
    torch.testing.assert_close(loaded(images, codes), model(images, codes))
    assert not any(p.requires_grad for p in loaded.parameters())
    reward = make_reward("toy-learned", path=str(tmp_path / "rm"))
    torch.testing.assert_close(reward(images, prompts)["score"], model(images, codes))
    assert REWARDS.facts("toy-learned").differentiable
    x = images.clone().requires_grad_(True)
    reward(x, prompts)["score"].sum().backward()
    assert x.grad is not None and x.grad.abs().max() > 0
    # the model's image gradient against finite differences, in float64 (torch.autograd.gradcheck)
    double = ToyRewardModel(width=4).double()
    double.load_state_dict(model.state_dict())
    one = images[:1].double().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda im: double(im, codes[:1].double()), one, eps=1e-6, atol=1e-6)
    big = torch.nn.functional.interpolate(images, size=(64, 64), mode="nearest")
    assert reward(big, prompts)["score"].shape == (3,)  # other sizes are resized to 32 × 32


def test_a_folder_of_another_vocabulary_is_refused(tmp_path):
    save_reward_model(ToyRewardModel(width=4), str(tmp_path / "rm"))
    config = json.loads((tmp_path / "rm" / "config.json").read_text())
    (tmp_path / "rm" / "config.json").write_text(json.dumps({**config, "colours": ["red"]}))
    with pytest.raises(ValueError, match="trained for another toy vocabulary"):
        load_reward_model(str(tmp_path / "rm"))
    with pytest.raises(FileNotFoundError, match=r"has no config\.json"):
        load_reward_model(str(tmp_path / "missing"))


def test_the_committed_model_agrees_with_the_evaluator_on_held_out_prompts():
    report = json.loads((REPO / "assets" / "toy-reward" / "report.json").read_text())
    held_out = report["held_out"]
    assert held_out["pearson"] > 0.8 and held_out["pairs"] > 50
    load_reward_model(str(REPO / "assets" / "toy-reward"))
