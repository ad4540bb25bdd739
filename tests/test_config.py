import dataclasses
import subprocess
import sys

import pytest

from lowtune.config import TRAIN_CONFIG_CLASSES, Recipe, explain, load_recipe, train_config_class
from lowtune.errors import LowtuneError
from lowtune.recipes import shipped_recipes


def write(tmp_path, text):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return path


def test_defaults_without_a_file():
    recipe = load_recipe()
    assert recipe == Recipe()
    assert recipe.lora.target_modules == "all-linear"


@pytest.mark.parametrize("name", sorted(shipped_recipes()))
def test_every_shipped_recipe_loads(name):
    recipe = load_recipe(shipped_recipes()[name])
    assert recipe.model.name
    if recipe.stages:  # a pipeline is named after its stages' methods (sft-grpo), or after the method it follows (r1)
        methods = [stage.method for stage in recipe.stages]
        assert all(m in TRAIN_CONFIG_CLASSES for m in methods)
        assert name.split("-") == methods or (name == "r1" and methods == ["sft", "grpo", "rejection_sampling"])
        return
    assert recipe.method in TRAIN_CONFIG_CLASSES
    # The recipe's name says its method (gpu/ presets name it after the slash); toolformer is SFT after augmentation;
    # r1-zero is DeepSeek-R1-Zero's recipe, GRPO from the base.
    said = name.split("/")[-1].split("-")[0]
    assert (
        said == recipe.method
        or (said == "toolformer" and recipe.method == "sft" and recipe.augment.tools)
        or (name == "r1-zero" and recipe.method == "grpo")
    )


def test_yaml_values_are_typed(tmp_path):
    path = write(tmp_path, "method: sft\ntrain:\n  learning_rate: 3e-4\n  max_steps: 10\nlora:\n  r: 8\n")
    recipe = load_recipe(path)
    # YAML 1.1 reads 3e-4 as a string; the schema makes it a float.
    assert recipe.train["learning_rate"] == pytest.approx(3e-4)
    assert recipe.train["max_steps"] == 10
    assert recipe.lora.r == 8


def test_overrides_reach_every_section(tmp_path):
    path = write(tmp_path, "method: sft\nlora:\n  r: 8\n")
    recipe = load_recipe(
        path,
        [
            "lora.r=4",
            "lora.use_dora=true",
            "train.max_steps=7",
            "data.operations=+,-",
            "eval.task=null",
            "model.name=tiny-random",
            "lora.target_modules=[q_proj, v_proj]",
        ],
    )
    assert recipe.lora.r == 4 and recipe.lora.use_dora is True
    assert recipe.train["max_steps"] == 7
    assert recipe.data.operations == ["+", "-"]
    assert recipe.eval.task is None
    assert recipe.model.name == "tiny-random"
    assert recipe.lora.target_modules == ["q_proj", "v_proj"]


def test_unknown_train_key_suggests_the_nearest_with_file_and_line(tmp_path):
    path = write(tmp_path, "method: sft\ntrain:\n  max_steps: 3\n  learnig_rate: 1.0e-4\n")
    with pytest.raises(LowtuneError) as e:
        load_recipe(path)
    msg = str(e.value)
    assert f"{path}:4" in msg
    assert "unknown key train.learnig_rate" in msg and "did you mean learning_rate?" in msg


@pytest.mark.parametrize(
    "override, expected",
    [
        ("model.quantisation=nf4", "unknown key model.quantisation — did you mean quantization?"),
        ("lorra.r=4", "unknown section lorra — did you mean lora?"),
        ("method=sfft", "unknown method sfft — did you mean sft?"),
        ("model.quantization=nf5", "model.quantization is 'nf5'; choose one of auto, nf4, int8, none"),
        ("lora.r=abc", "lora.r should be an integer"),
        ("lora.r=0", "lora.r must be positive"),
        ("train.max_steps=many", "train.max_steps should be an integer"),
        ("train.bf16=maybe", "train.bf16 = 'maybe' is not a valid"),
        ("data.operations=+,/", "unknown operation '/'"),
        ("train.lr_scheduler_type=bogus", "train.lr_scheduler_type is 'bogus'; choose one of"),
        ("max_steps", "write it as section.field=value"),
        ("augment.tools=[calculater]", "unknown tool calculater — did you mean calculator?"),
        ("augment.samples=0", "augment.samples must be positive"),
        ("eval.task=word_problem", "unknown eval.task word_problem — did you mean word_problems?"),
        ("model.dtype=bfloat61", "model.dtype is 'bfloat61'; choose one of auto, float32, bfloat16, float16"),
        ("model.gradient_checkpointing=maybe", "model.gradient_checkpointing is 'maybe'; choose one of auto, true"),
        ("data.operands=5", "data.operands must be 2..4, got 5"),
        ("eval.operands=1", "eval.operands must be 2..4, got 1"),
        ("data.digits=7", "data.digits must be 1..6, got 7"),
        ("budget.minutes=0", "budget.minutes must be positive"),
        ("data.heldout=1.5", "data.heldout is a row count or a fraction in [0, 1), got 1.5"),
        ("eval.tools=[a.b:c, serch]", "unknown tool serch — did you mean search?"),
    ],
)
def test_bad_overrides_name_the_field(override, expected):
    with pytest.raises(LowtuneError) as e:
        load_recipe(None, [override])
    assert expected in str(e.value)
    assert str(e.value).startswith("override")  # says where the bad value came from


def test_invalid_yaml_names_the_line(tmp_path):
    path = write(tmp_path, "method: sft\nmodel:\n  name: [unclosed\n")
    with pytest.raises(LowtuneError, match=r"r\.yaml:\d+: not valid YAML"):
        load_recipe(path)


def test_missing_recipe_file(tmp_path):
    with pytest.raises(LowtuneError, match="not found"):
        load_recipe(tmp_path / "nope.yaml")


def test_section_must_be_a_mapping(tmp_path):
    with pytest.raises(LowtuneError, match="lora must be a mapping"):
        load_recipe(write(tmp_path, "lora: 16\n"))


def test_explain_documents_every_field():
    rows = explain("sft")
    fields = {r[0] for r in rows}
    assert {"model.quantization", "lora.use_rslora", "data.source", "train.learning_rate"} <= fields
    assert all(doc for name, _, doc in rows if not name.startswith("train"))


def test_override_values_yaml_cannot_parse_stay_text():
    recipe = load_recipe(None, ["data.system_prompt=[be brief", "data.source='a: b.jsonl'"])
    assert recipe.data.system_prompt == "[be brief" and recipe.data.source == "a: b.jsonl"
    with pytest.raises(LowtuneError, match=r"output.name = \{'run': 2\} is not a valid .* \(quote text"):
        load_recipe(None, ["output.name=run: 2"])


def test_an_override_without_a_value_is_refused_not_read_as_unset():
    """`budget.minutes=$M` with $M empty once ran with no budget at all; now it stops and says how to unset."""
    for item in ["budget.minutes=", "budget.minutes=  "]:
        with pytest.raises(LowtuneError, match=r"no value after '='; give one, or budget.minutes=null to unset"):
            load_recipe(None, [item])
    assert load_recipe(None, ["budget.minutes=5", "budget.minutes=null"]).budget.minutes is None


def test_augmentation_feeds_sft_only():
    with pytest.raises(LowtuneError, match="Toolformer augmentation feeds SFT; set method: sft"):
        load_recipe(None, ["method=dpo", "augment.tools=[calculator]"])
    assert load_recipe(None, ["augment.tools=calculator,calendar"]).augment.tools == ["calculator", "calendar"]


def test_logprob_kernel_help_cites_only_measured_figures():
    """Each timing in model.logprob_kernel's help is in the results file it names; it names no GPU it was not run on."""
    import dataclasses
    import re
    from pathlib import Path

    from lowtune.config import ModelConfig

    doc = {f.name: f.metadata["doc"] for f in dataclasses.fields(ModelConfig)}["logprob_kernel"]
    cited = "benchmarks/results/logprobs.md"
    assert cited in doc
    results = (Path(__file__).resolve().parents[1] / cited).read_text()
    figures = re.findall(r"\d+(?:\.\d+)? s\b", doc)
    assert figures and all(f"| {f} |" in results for f in figures), figures
    for gpu in re.findall(r"\b(?:H|A|B|L|T|V)\d{2,3}\b|RTX ?\d{4}", doc):
        assert gpu in results, f"the help names a measurement on {gpu}, which {cited} does not hold"


@pytest.mark.parametrize(
    "override, nearest",
    [
        ("model.quantization=nf5", "nf4"),
        ("model.dtype=bfloat61", "bfloat16"),
        ("model.device=cudaa", "cuda"),
        ("model.logprob_kernel=lowtun", "lowtune"),
        ("data.format=gsm9k", "gsm8k"),
        ("data.bad_rows=skipp", "skip"),
        ("train.lr_scheduler_type=cosin", "cosine"),
    ],
)
def test_a_bad_choice_names_the_nearest_valid_one(override, nearest):
    with pytest.raises(LowtuneError, match=f"; choose one of .* — did you mean {nearest}\\?$"):
        load_recipe(None, [override])


def test_a_bad_choice_in_a_file_names_its_line(tmp_path):
    path = write(tmp_path, "method: sft\nmodel:\n  name: tiny-random\n  dtype: fp16\n")
    with pytest.raises(LowtuneError) as e:
        load_recipe(path)
    assert str(e.value).startswith(f"{path}:4: model.dtype is 'fp16'; choose one of auto, float32, bfloat16, float16")


def test_choices_are_documented_and_accepted_from_one_declaration():
    """A field's declared choices are the ones its doc lists and the only values the recipe accepts."""
    checked = 0
    for section in dataclasses.fields(Recipe):
        if section.name in ("method", "train", "stages"):
            continue
        for f in dataclasses.fields(getattr(Recipe(), section.name)):
            dotted = f"{section.name}.{f.name}"
            for choice in f.metadata.get("choices", ()):
                name = str(choice).lower() if isinstance(choice, bool) else str(choice)
                assert name in f.metadata["doc"], dotted
                value = name if isinstance(choice, bool) else f"'{name}'"  # quoted: YAML reads `-` as a list
                needs = [f"eval.data={__file__}"] if dotted == "eval.task" and name == "gsm8k" else []  # a file
                loaded = getattr(getattr(load_recipe(None, [f"{dotted}={value}", *needs]), section.name), f.name)
                assert loaded in (choice, [choice]), dotted
                checked += 1
            if "choices" in f.metadata:
                with pytest.raises(LowtuneError, match=r"choose one of|unknown "):
                    load_recipe(None, [f"{dotted}=not-a-choice"])
    assert checked >= 20
    method_doc = {r[0]: r[2] for r in explain()}["method"]
    assert all(method in method_doc for method in TRAIN_CONFIG_CLASSES)


def test_every_method_has_its_train_config_class():
    for method in TRAIN_CONFIG_CLASSES:
        cls = train_config_class(method)
        assert dataclasses.is_dataclass(cls) and cls.__name__.lower() == f"{method.replace('_', '')}config"
        public = {
            "ppo": "lowtune.rl.config.PPOConfig",
            "orpo": "trl.experimental.orpo.ORPOConfig",
            "online_dpo": "trl.experimental.online_dpo.OnlineDPOConfig",
            "rejection_sampling": "lowtune.config.rejection_sampling.RejectionSamplingConfig",
            "grpo": "lowtune.config.grpo.GRPOConfig",
        }.get(method, f"trl.{cls.__name__}")
        assert explain(method)[-1] == ("train.*", "", f"any other field of {public}")


def test_importing_the_config_does_not_import_trl():
    code = "import sys, lowtune.config; print('trl' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_field_docs_say_what_a_field_does_not_its_history():
    docs = [doc for _, _, doc in explain()]
    assert not any(word in doc for doc in docs for word in ("since removed", "see README", "GiB"))
