"""Generation with the LoRA adapter folded into a copy of the weights (lowtune.models.folded_lora): the same model,
the base's own weights untouched afterwards, and nothing folded where it would not be exact."""

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from lowtune import models


def adapted(tiny_path, **lora):
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_path)
    config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False, **lora)
    return get_peft_model(base, config).eval()


def adapter_on(model) -> bool:
    from peft.tuners.lora import LoraLayer

    return not next(m for m in model.modules() if isinstance(m, LoraLayer)).disable_adapters


def base_weights(model):
    return {n: p for n, p in model.named_parameters() if "lora_" not in n}


def with_and_without_adapter(model, ids):
    """The logits of `ids` with the adapter, and with it switched off."""
    with torch.no_grad():
        adapted_logits = model(ids).logits
        with model.disable_adapter():
            return adapted_logits, model(ids).logits


def test_folded_model_is_the_adapted_model_and_the_base_comes_back_untouched(tiny_path):
    model = adapted(tiny_path)
    ids = torch.randint(0, model.config.vocab_size, (2, 12))
    adapted_logits, plain_logits = with_and_without_adapter(model, ids)
    assert not torch.allclose(adapted_logits, plain_logits, atol=1e-3)  # the adapter changes the model
    before = {n: (p.data_ptr(), p.detach().clone()) for n, p in base_weights(model).items()}
    foldable = len(models._foldable_lora_layers(model))
    with torch.no_grad(), models.folded_lora(model, True):
        folded_logits = model(ids).logits
        changed = [n for n, p in base_weights(model).items() if p.data_ptr() != before[n][0]]
        assert changed and all(".base_layer." in n for n in changed)  # folded into new tensors, not in place
        assert len(changed) == foldable == 14  # 7 linear layers in each of tiny-random's 2 blocks
    assert torch.allclose(folded_logits, adapted_logits, atol=1e-5, rtol=1e-5)
    for n, p in base_weights(model).items():  # the same tensors, bit for bit
        assert p.data_ptr() == before[n][0] and torch.equal(p, before[n][1]), n
    with torch.no_grad():
        assert torch.equal(model(ids).logits, adapted_logits)  # the adapter is on again


def test_greedy_generation_is_the_same_folded(tiny_path):
    model = adapted(tiny_path)
    ids = torch.randint(0, model.config.vocab_size, (3, 6))
    kw = dict(max_new_tokens=12, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        unfolded = model.generate(input_ids=ids, **kw)
        with models.folded_lora(model, True):
            folded = model.generate(input_ids=ids, **kw)
    assert torch.equal(folded, unfolded)


@pytest.mark.parametrize(
    "lora, training, enabled",
    [({"use_dora": True}, False, True), ({"lora_dropout": 0.1}, True, True), ({}, False, False)],
    ids=["dora", "dropout-while-training", "off"],
)
def test_nothing_is_folded_where_it_would_not_be_exact_or_is_off(tiny_path, lora, training, enabled):
    model = adapted(tiny_path, **lora).train(training)
    ptrs = {n: p.data_ptr() for n, p in base_weights(model).items()}
    with models.folded_lora(model, enabled):
        assert {n: p.data_ptr() for n, p in base_weights(model).items()} == ptrs
        assert adapter_on(model)  # the adapter runs as it is


def test_auto_folds_on_cpu_and_a_plain_model_is_left_alone(tiny_path):
    model = adapted(tiny_path)
    ptrs = {n: p.data_ptr() for n, p in base_weights(model).items()}
    with models.folded_lora(model):  # None: on CPU
        assert any(p.data_ptr() != ptrs[n] for n, p in base_weights(model).items())
        assert not adapter_on(model)  # its layers run folded
    plain = AutoModelForCausalLM.from_pretrained(tiny_path)
    assert models._foldable_lora_layers(plain) == []
    with models.folded_lora(plain, True) as m:
        assert m is plain


def test_an_adapter_switched_off_stays_off_and_folding_twice_folds_once(tiny_path):
    model = adapted(tiny_path)
    ids = torch.randint(0, model.config.vocab_size, (2, 8))
    adapted_logits, plain_logits = with_and_without_adapter(model, ids)
    with torch.no_grad():
        with model.disable_adapter(), models.folded_lora(model, True):  # a reference pass: the base, not the adapter
            assert torch.equal(model(ids).logits, plain_logits)
        with models.folded_lora(model, True), models.folded_lora(model, True):
            assert torch.allclose(model(ids).logits, adapted_logits, atol=1e-5, rtol=1e-5)
